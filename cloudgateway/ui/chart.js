// Line charts drawn as SVG by hand: a time axis, a value axis, the line and a
// dot per value. `points` is [[ms, value], ...] in time order.

const SVG = "http://www.w3.org/2000/svg";

function s(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function short(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
  return String(Number(v.toPrecision(4)));
}

/** A round step (1, 2 or 5 times a power of ten) giving 3 to 6 ticks over `span`. */
function tickStep(span) {
  const raw = span / 4;
  const pow = 10 ** Math.floor(Math.log10(raw));
  const m = raw / pow;
  return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * pow;
}

/** An <svg class="chart"> of `points`; `small`: a sparkline without axes. Its
 * data-points attribute says how many values it shows. */
export function chart(points, { small = false, title = "" } = {}) {
  const w = small ? 160 : 640;
  const hgt = small ? 36 : 220;
  const pad = small ? { l: 2, r: 2, t: 3, b: 3 } : { l: 54, r: 12, t: 12, b: 26 };
  const svg = s("svg", {
    class: small ? "chart spark" : "chart",
    viewBox: `0 0 ${w} ${hgt}`,
    preserveAspectRatio: small ? "none" : "xMidYMid meet",
    role: "img",
    "data-points": points.length,
  });
  svg.append(s("title", {}, `${title}${title ? ": " : ""}${points.length} value${points.length === 1 ? "" : "s"}`));
  if (!points.length) {
    if (!small) svg.append(s("text", { x: w / 2, y: hgt / 2, "text-anchor": "middle", class: "empty" }, "no numeric values yet"));
    return svg;
  }
  let t0 = points[0][0];
  let t1 = points[points.length - 1][0];
  if (t1 - t0 < 1000) { t0 -= 30000; t1 += 30000; }
  let lo = Math.min(...points.map((p) => p[1]));
  let hi = Math.max(...points.map((p) => p[1]));
  if (hi === lo) { lo -= 1; hi += 1; }
  const step = tickStep(hi - lo);
  lo = Math.floor(lo / step) * step;
  hi = Math.ceil(hi / step) * step;
  const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (w - pad.l - pad.r);
  const y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * (hgt - pad.t - pad.b);
  if (!small) {
    for (let v = lo; v <= hi + step / 2; v += step) {
      svg.append(s("line", { x1: pad.l, x2: w - pad.r, y1: y(v), y2: y(v), class: "grid" }));
      svg.append(s("text", { x: pad.l - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" }, short(v)));
    }
    svg.append(s("text", { x: pad.l, y: hgt - 6, "text-anchor": "start", class: "axis" }, clock(t0)));
    svg.append(s("text", { x: w - pad.r, y: hgt - 6, "text-anchor": "end", class: "axis" }, clock(t1)));
  }
  const line = points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  svg.append(s("polyline", { points: line, class: "line", "vector-effect": "non-scaling-stroke" }));
  {
    const dots = s("g", { class: "dots" });
    for (const [t, v] of points) {
      const dot = s("circle", { cx: x(t).toFixed(1), cy: y(v).toFixed(1), r: small ? 1.5 : 2.5 });
      dot.append(s("title", {}, `${short(v)} at ${clock(t)}`));
      dots.append(dot);
    }
    svg.append(dots);
  }
  return svg;
}
