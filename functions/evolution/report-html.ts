import type { KeptRatio, ShardReport } from "./report.ts";

const escapeHtml = (text: string): string => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** A horizontal bar chart as inline SVG: no scripts, no network, opens anywhere. */
function bars(
  title: string,
  rows: readonly { label: string; value: number; text: string }[],
  max: number,
): string {
  const height = 26 * rows.length + 30;
  const body = rows
    .map((row, i) => {
      const width = max <= 0 ? 0 : Math.round((row.value / max) * 360);
      const y = 30 + i * 26;
      return `<text x="0" y="${y + 14}" font-size="12">${escapeHtml(row.label)}</text><rect x="150" y="${y}" width="${width}" height="18" fill="#3b6ea5"/><text x="${156 + width}" y="${y + 14}" font-size="12">${escapeHtml(row.text)}</text>`;
    })
    .join("");
  return `<figure><svg width="600" height="${height}" role="img" aria-label="${escapeHtml(title)}"><text x="0" y="16" font-size="14" font-weight="bold">${escapeHtml(title)}</text>${body}</svg></figure>`;
}

const pct = (r: KeptRatio): string =>
  r.ratio === null ? "n/a" : `${(r.ratio * 100).toFixed(1)}% of ${r.candidates}`;

export function renderReportHtml(report: ShardReport): string {
  const c = report.counts;
  const countRows = [
    { label: "evolved", value: c.evolved },
    { label: "passed through", value: c.passedThrough },
    { label: "failed", value: c.failed },
    { label: "rejected", value: c.rejected },
  ].map((r) => ({ ...r, text: String(r.value) }));
  const roundRows = Object.entries(report.keptByRound).map(([label, r]) => ({
    label,
    value: r.ratio ?? 0,
    text: pct(r),
  }));
  const directionRows = Object.entries(report.keptByDirection).map(([label, r]) => ({
    label,
    value: r.ratio ?? 0,
    text: pct(r),
  }));
  const scoreRows = Object.entries(report.versions).map(([label, v]) => ({
    label,
    value: v.meanScore ?? 0,
    text: `score ${v.meanScore === null ? "n/a" : v.meanScore.toFixed(2)}, skills ${v.meanSkills.toFixed(2)}, steps ${v.meanSteps.toFixed(2)}, ${v.items} items`,
  }));
  const u = report.usage;
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>mmevol report ${escapeHtml(report.run)}/${escapeHtml(report.shard)}</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:right;border-bottom:1px solid #ddd}.dry{background:#fde68a;padding:.6em;font-weight:bold}</style></head><body>
<h1>MMEvol report: ${escapeHtml(report.run)} / ${escapeHtml(report.shard)}</h1>
${report.dryRun ? `<p class="dry">${escapeHtml(report.notice ?? "DRY RUN")}</p>` : ""}
<p>Model ${escapeHtml(report.model)}, ${report.rounds} rounds, generated ${escapeHtml(report.generatedAt)}. ${c.lines} input lines; counts ${c.addsUp ? "add up" : "DO NOT add up"}; ${report.trainingRecords} training records.</p>
${bars("Input lines by outcome", countRows, Math.max(1, ...countRows.map((r) => r.value)))}
${bars("Items kept by the judge, per round", roundRows, 1)}
${bars("Items kept by the judge, per direction", directionRows, 1)}
${bars("Mean judge score per version", scoreRows, 10)}
<h2>Tokens and cost</h2>
<table><tr><th>calls</th><th>prompt tokens</th><th>cached</th><th>completion tokens</th><th>cost (USD)</th><th>per evolved sample</th></tr>
<tr><td>${u.calls}</td><td>${u.promptTokens}</td><td>${u.cachedTokens}</td><td>${u.completionTokens}</td><td>${u.costUsd.toFixed(4)}</td><td>${u.costPerEvolvedSampleUsd === null ? "n/a" : u.costPerEvolvedSampleUsd.toFixed(5)}</td></tr></table>
</body></html>
`;
}
