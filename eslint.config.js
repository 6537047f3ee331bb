import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['**/node_modules/**', '**/dist/**', 'bench/results/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_' },
      ],
    },
  },
  {
    // The server uses other workspace packages through their public exports only.
    files: ['packages/server/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: [
                '**/runtime/src/**',
                '**/sdk/src/**',
                '**/cli/src/**',
                '@fastvm/*/src/**',
                'fastvm/src/**',
              ],
              message: "Import the package's public exports, not its src/ files.",
            },
          ],
        },
      ],
    },
  },
  {
    // Server layering: the domain, the services and the store know nothing about HTTP. Services
    // take domain inputs and throw domain errors (domain/errors.ts); routes and the error handler
    // translate (routes/inputs.ts, http/error-mapping.ts).
    files: ['packages/server/src/{domain,services,store}/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: [
                '**/runtime/src/**',
                '**/sdk/src/**',
                '**/cli/src/**',
                '@fastvm/*/src/**',
                'fastvm/src/**',
              ],
              message: "Import the package's public exports, not its src/ files.",
            },
            {
              group: ['fastify', '@fastify/*', 'zod'],
              message: 'No HTTP or wire types below the routes.',
            },
            {
              group: ['../errors.js', '../schemas.js', '../app.js', '../http/*', '../routes/*'],
              message:
                'No HTTP errors or wire schemas below the routes: throw a domain error (domain/errors.ts).',
            },
          ],
        },
      ],
    },
  },
  {
    // CommonJS entry points (packages/cli/bin/fastvm.cjs).
    files: ['**/*.cjs'],
    languageOptions: { sourceType: 'commonjs', globals: { require: 'readonly' } },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
);
