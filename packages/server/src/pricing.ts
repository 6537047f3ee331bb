/**
 * Prices answered by `GET /v1/pricing` (contract §4.12): server configuration. The default is a
 * single open tier at zero (a self-hosted server charges nothing unless told otherwise);
 * `FASTVM_PRICING` replaces it with a JSON document of the contract's shape.
 * @module
 */
import type { Pricing } from './domain/index.js';
import { Pricing as PricingSchema } from './schemas.js';

/** Pricing when none is configured. */
export const DEFAULT_PRICING: Pricing = {
  compute: {
    tiers: [{ tier: 1, fromVcpuHours: 0, toVcpuHours: null, ratePerVcpuHour: '0.00' }],
  },
  volumeStorage: { ratePerGiBMonth: '0.00' },
};

/** Parses a pricing JSON document; throws with a user-facing message when it does not fit. */
export function parsePricing(json: string): Pricing {
  let doc: unknown;
  try {
    doc = JSON.parse(json);
  } catch (err) {
    throw new Error(`FASTVM_PRICING is not JSON: ${(err as Error).message}`, { cause: err });
  }
  const parsed = PricingSchema.safeParse(doc);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new Error(
      `FASTVM_PRICING does not fit the pricing shape at ${issue?.path.join('.') || '(top)'}: ${issue?.message ?? 'invalid'}`,
    );
  }
  const tiers = parsed.data.compute.tiers;
  tiers.forEach((t, i) => {
    if (t.tier !== i + 1)
      throw new Error('FASTVM_PRICING: tiers must be numbered 1, 2, … in order');
  });
  return parsed.data;
}

/** `FASTVM_PRICING` when set, otherwise the default. */
export function pricingFromEnv(env: Record<string, string | undefined> = process.env): Pricing {
  return env.FASTVM_PRICING ? parsePricing(env.FASTVM_PRICING) : DEFAULT_PRICING;
}
