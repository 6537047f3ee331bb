/** A quota as a half-ring gauge: used of limit, with the numbers in words for screen readers. */
export function Gauge(props: { label: string; used: number; limit: number; unit?: string }) {
  const { used, limit } = props;
  const ratio = limit > 0 ? Math.min(1, used / limit) : 0;
  const r = 40;
  const arc = Math.PI * r;
  const level = ratio >= 0.9 ? 'high' : ratio >= 0.7 ? 'mid' : 'low';
  const unit = props.unit ? ` ${props.unit}` : '';
  return (
    <figure class={`gauge ${level}`}>
      <svg
        viewBox="0 0 100 58"
        role="img"
        aria-label={`${props.label}: ${used} of ${limit}${unit} used`}
      >
        <path class="track" d="M10,50 A40,40 0 0 1 90,50" pathLength={arc} />
        {ratio > 0 ? (
          <path
            class="fill"
            d="M10,50 A40,40 0 0 1 90,50"
            pathLength={arc}
            stroke-dasharray={`${arc * ratio} ${arc}`}
          />
        ) : null}
        <text x="50" y="46" text-anchor="middle">
          {Math.round(ratio * 100)}%
        </text>
      </svg>
      <figcaption>
        <strong>{props.label}</strong>
        <span>
          {used} / {limit}
          {unit}
        </span>
      </figcaption>
    </figure>
  );
}
