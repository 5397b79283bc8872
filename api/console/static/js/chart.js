// A time series chart on uPlot (vendored, global ``uPlot``): points are added as they come,
// oldest first; a point already shown (same time and id) or older than the newest is
// dropped. The container's data-points attribute counts what is drawn (the tests read it).
"use strict";

const MAX_POINTS = 5000;

export class SeriesChart {
  constructor(container, label, unit) {
    this.container = container;
    this.xs = [];
    this.ys = [];
    this.lastTs = -Infinity;
    this.keysAtLast = new Set();
    const opts = {
      width: Math.max(320, container.clientWidth || 800),
      height: 300,
      scales: {x: {time: true}},
      series: [{}, {label: unit ? `${label} (${unit})` : label, stroke: "#0b63c5", width: 2, fill: "rgba(11,99,197,0.08)", points: {size: 5}}],
      axes: [{}, {size: 60}],
      legend: {live: true},
    };
    this.plot = new uPlot(opts, [this.xs, this.ys], container);
    this.onResize = () => this.plot.setSize({width: Math.max(320, container.clientWidth), height: 300});
    window.addEventListener("resize", this.onResize);
    container.dataset.points = "0";
  }

  /** Add ``points`` ([{ts, value, id}], oldest first); returns the newest time shown. */
  add(points) {
    let added = 0;
    for (const p of points) {
      const key = `${p.ts}:${p.id}`;
      if (p.ts < this.lastTs || (p.ts === this.lastTs && this.keysAtLast.has(key))) continue;
      if (p.ts > this.lastTs) {
        this.lastTs = p.ts;
        this.keysAtLast = new Set();
      }
      this.keysAtLast.add(key);
      this.xs.push(p.ts / 1000); // uPlot's times are seconds
      this.ys.push(p.value);
      added += 1;
    }
    if (added) {
      if (this.xs.length > MAX_POINTS) {
        this.xs.splice(0, this.xs.length - MAX_POINTS);
        this.ys.splice(0, this.ys.length - MAX_POINTS);
      }
      this.plot.setData([this.xs, this.ys]);
      this.container.dataset.points = String(this.xs.length);
    }
    return this.lastTs;
  }

  get latest() {
    return this.ys.length ? {ts: this.lastTs, value: this.ys[this.ys.length - 1]} : null;
  }

  destroy() {
    window.removeEventListener("resize", this.onResize);
    this.plot.destroy();
  }
}
