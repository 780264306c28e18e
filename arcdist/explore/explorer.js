(function () {
  const D = JSON.parse(document.getElementById('arcdist-data').textContent);
  const gd = document.getElementById('explorer');
  const bytes = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  const u16 = (s) => { const b = bytes(s); return new Uint16Array(b.buffer, b.byteOffset, b.length / 2); };
  const u32 = (s) => { const b = bytes(s); return new Uint32Array(b.buffer, b.byteOffset, b.length / 4); };
  const esc = (t) => String(t).replace(/[&<>"']/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'})[c]);
  const sources = D.sources.map((s) => ({...s, index: u32(s.index), labels: u16(s.labels)}));
  const cache = {};
  // one epoch of one run, decoded: x, y (and z for 3-D; NaN where not finite), predictions, angle to the class
  // direction (deg; above 3-D the page stores the angles of all the dimensions)
  function decode(si, e) {
    const key = si + ':' + e;
    if (cache[key]) return cache[key];
    const ep = D.series[si].epochs[e];
    if (!ep) return null;
    const q = u16(ep.xy), pred = u16(ep.pred), src = sources[D.series[si].src], n = src.labels.length;
    const dims = ep.lo.length, cols = [0, 1, 2].slice(0, dims).map(() => new Float64Array(n));
    const steps = ep.lo.map((lo, k) => (ep.hi[k] > lo ? (ep.hi[k] - lo) / 65534 : 0));
    const ang = ep.ang ? Float64Array.from(u16(ep.ang), (v) => v / 100) : new Float64Array(n);
    for (let i = 0; i < n; i++) {
      let dot = 0, xx = 0, ww = 0;
      const w = ep.W[src.labels[i]];
      for (let k = 0; k < dims; k++) {
        const a = q[dims * i + k], v = a === 65535 ? NaN : ep.lo[k] + a * steps[k];
        cols[k][i] = v; dot += v * w[k]; xx += v * v; ww += w[k] * w[k];
      }
      if (!ep.ang) ang[i] = Math.acos(Math.max(-1, Math.min(1, dot / Math.sqrt(xx * ww)))) * 180 / Math.PI;
    }
    return (cache[key] = {x: cols[0], y: cols[1], z: cols[2] || null, pred, ang, ep});
  }
  // a 3-D panel's class directions (and on the sphere the caps where the margin is met: arcdist.directions.margin_caps)
  // as one line trace, segments split by nulls
  function directions(W, r, caps, sphere) {
    const xs = [], ys = [], zs = [], col = [];
    const push = (p, c) => { xs.push(p ? p[0] : null); ys.push(p ? p[1] : null); zs.push(p ? p[2] : null); col.push(c); };
    W.forEach((w, c) => {
      if (!w.some((v) => v)) return;  // an unseen class: no direction
      const n = Math.hypot(w[0], w[1], w[2]) || 1, u = w.map((v) => v / n), cc = D.colours[c];
      push(u.map((v) => (D.dense ? 1.05 : 0) * v), cc); push(u.map((v) => r * v), cc); push(null, cc);
      const cap = caps ? caps[c] : 0;
      if (!sphere || !(cap > 0) || D.dense) return;
      const t = Math.abs(u[0]) < 0.9 ? [1, 0, 0] : [0, 1, 0];
      let a = [u[1] * t[2] - u[2] * t[1], u[2] * t[0] - u[0] * t[2], u[0] * t[1] - u[1] * t[0]];
      const na = Math.hypot(...a); a = a.map((v) => v / na);
      const b = [u[1] * a[2] - u[2] * a[1], u[2] * a[0] - u[0] * a[2], u[0] * a[1] - u[1] * a[0]];
      for (let k = 0; k <= 32; k++) {
        const s = 2 * Math.PI * k / 32;
        push([0, 1, 2].map((j) => Math.cos(cap) * u[j] + Math.sin(cap) * (Math.cos(s) * a[j] + Math.sin(s) * b[j])), cc);
      }
      push(null, cc);
    });
    return {x: xs, y: ys, z: zs, col};
  }
  // the run's newest stored epoch at or before e (a run that stopped early keeps its last picture)
  function epochOf(si, e) {
    let best = null;
    for (const k of Object.keys(D.series[si].epochs).map(Number)) if (k <= e && (best === null || k > best)) best = k;
    return best;
  }
  const traces = gd.data.map((t, i) => ({i, ...t.meta}));
  const C = D.classes.length;
  function sector(r, a0, a1) {
    let p = 'M 0 0';
    for (let k = 0; k <= 16; k++) { const a = a0 + (a1 - a0) * k / 16; p += ` L ${r * Math.cos(a)} ${r * Math.sin(a)}`; }
    return p + ' Z';
  }
  function render(idx) {
    const e = D.epochs[idx], fit = document.getElementById('fit').checked;
    const upd = {x: [], y: [], customdata: [], 'marker.symbol': [], 'marker.size': [], z: [], x0: [], dx: [], y0: [],
                 dy: []}, ids = [], layout = {shapes: []}, titles = [], lines = {x: [], y: [], z: [], 'line.color': []},
          lineIds = [];
    D.panels.forEach((p, pi) => {
      const s = D.series[p.series], k = epochOf(p.series, e), d = k === null ? null : decode(p.series, k);
      const solid = p.kind === 'scene', circle = p.view === 'circle' || p.view === 'sphere', src = sources[s.src];
      const lim = circle ? 1.35 : (fit && d ? d.ep.limit : s.limit);
      const ax = p.ax;
      if (solid) {
        for (const a of ['xaxis', 'yaxis', 'zaxis']) layout[`scene${ax}.${a}.range`] = [-lim, lim];
      } else {
        layout[`xaxis${ax}.range`] = [-lim, lim];
        layout[`yaxis${ax}.range`] = [-lim, lim];
      }
      const acc = d ? ` acc ${(100 * d.ep.acc).toFixed(2)} %` : '';
      titles.push(`${p.title}  epoch ${k === null ? '-' : k}${acc}`);
      const W = d ? d.ep.W : [], margin = d ? d.ep.margin : 0, linear = d && d.ep.b;
      const r = circle ? 1.25 : lim * 1.5;
      if (solid) {
        const dirs = directions(D.dense && !circle ? [] : W, circle ? 1.3 : lim, d ? d.ep.caps : null, circle);
        for (const t of traces.filter((t) => t.panel === pi && t.role === 'directions')) {
          lineIds.push(t.i); lines.x.push(dirs.x); lines.y.push(dirs.y); lines.z.push(dirs.z); lines['line.color'].push(dirs.col);
        }
      } else W.forEach((w, c) => {
        if (!w.some((v) => v)) return;  // an unseen class: no direction
        const a = Math.atan2(w[1], w[0]), col = D.colours[c];
        if (D.dense) {  // more classes than a legend names: ticks outside the circle, nothing behind raw points
          if (circle) layout.shapes.push({type: 'line', xref: `x${ax}`, yref: `y${ax}`, x0: 1.08 * Math.cos(a),
            y0: 1.08 * Math.sin(a), x1: r * Math.cos(a), y1: r * Math.sin(a), line: {color: col, width: 1}, layer: 'below'});
          return;
        }
        const z = d.ep.zones ? d.ep.zones[c] : null;  // where the margin is met (arcdist.directions.margin_zones)
        if (margin > 0 && z && z[1] > z[0]) layout.shapes.push({type: 'path', xref: `x${ax}`, yref: `y${ax}`,
          path: sector(r, z[0], z[1]), fillcolor: col, opacity: 0.15, line: {width: 0}, layer: 'below'});
        if (!linear || circle) layout.shapes.push({type: 'line', xref: `x${ax}`, yref: `y${ax}`, x0: 0, y0: 0,
          x1: r * Math.cos(a), y1: r * Math.sin(a), line: {color: col, width: circle ? 1.5 : 1, dash: circle ? 'solid' : 'dash'},
          layer: 'below'});
      });
      if (circle && !solid) layout.shapes.push({type: 'circle', xref: `x${ax}`, yref: `y${ax}`, x0: -1, y0: -1, x1: 1, y1: 1,
        line: {color: '#bbb', width: 1}, layer: 'below'});
      for (const t of traces.filter((t) => t.panel === pi && t.role !== 'directions')) {
        ids.push(t.i);
        let xs = [], ys = [], zs = [], cd = [], sym = [], size = [], z = null, x0 = null, dx = null;
        if (t.role === 'class' && d) {
          // the misclassified last: drawn on top, and the legend keeps the first point's symbol (a dot)
          const mine = [];
          for (let i = 0; i < src.labels.length; i++) if (src.labels[i] === t.cls) mine.push(i);
          mine.sort((a, b) => (d.pred[a] !== t.cls) - (d.pred[b] !== t.cls) || a - b);
          for (const i of mine) {
            let px = d.x[i], py = d.y[i], pz = solid ? d.z[i] : 0;
            if (circle) { const nrm = Math.hypot(px, py, pz) || 1; px /= nrm; py /= nrm; pz /= nrm; }
            const wrong = d.pred[i] !== t.cls, unseen = (d.ep.unseen || []).includes(t.cls);
            xs.push(px); ys.push(py); zs.push(pz); cd.push(i); sym.push(unseen ? 'diamond-open' : wrong ? 'x' : 'circle');
            size.push(solid ? (wrong ? 4 : 2) : (wrong ? 7 : 4));
          }
        } else if (t.role === 'centers' && d && d.ep.centers && !circle) {
          xs = d.ep.centers.map((c) => c[0]); ys = d.ep.centers.map((c) => c[1]); zs = d.ep.centers.map((c) => c[2]);
        } else if (t.role === 'regions' && linear && !circle) {
          const m = 120, b = d.ep.b; z = [];
          dx = 2 * lim / m; x0 = -lim + dx / 2;
          for (let j = 0; j < m; j++) {
            const row = [], gy = x0 + j * dx;
            for (let i = 0; i < m; i++) {
              const gx = x0 + i * dx; let best = 0, bv = -Infinity;
              W.forEach((w, c) => { const v = w[0] * gx + w[1] * gy + b[c]; if (v > bv) { bv = v; best = c; } });
              row.push(best);
            }
            z.push(row);
          }
        }
        const heat = t.role === 'regions';  // a heatmap placed by x0/dx: no x or y arrays
        upd.x.push(heat ? null : xs); upd.y.push(heat ? null : ys); upd.customdata.push(heat ? null : cd); upd['marker.symbol'].push(t.role === 'class' ? sym : 'x');
        upd['marker.size'].push(t.role === 'class' ? size : (solid ? 5 : 11));
        upd.z.push(solid ? zs : (z || [[null]])); upd.x0.push(x0 ?? 0); upd.dx.push(dx ?? 1); upd.y0.push(x0 ?? 0); upd.dy.push(dx ?? 1);
      }
    });
    (gd.layout.annotations || []).forEach((a, i) => { if (i < titles.length) layout[`annotations[${i}].text`] = titles[i]; });
    document.getElementById('epoch-label').textContent = `epoch ${e} (${idx + 1} of ${D.epochs.length})`;
    const drawn = Plotly.update(gd, upd, layout, ids);
    return (lineIds.length ? drawn.then(() => Plotly.restyle(gd, lines, lineIds)) : drawn)
      .then(() => { document.body.dataset.epoch = String(e); });
  }
  const slider = document.getElementById('epoch'), play = document.getElementById('play');
  slider.max = String(D.epochs.length - 1);
  slider.value = String(D.epochs.length - 1);
  let busy = Promise.resolve(), timer = null;
  const show = () => { const i = Number(slider.value); busy = busy.then(() => render(i)); return busy; };
  slider.addEventListener('input', show);
  document.getElementById('fit').addEventListener('change', show);
  // play: the next epoch only once the last one is drawn (a slow machine skips nothing and queues nothing)
  const stop = () => { clearTimeout(timer); timer = null; play.innerHTML = '&#9654; play'; };
  const step = () => {
    if (!timer) return;
    if (Number(slider.value) >= D.epochs.length - 1) { stop(); return; }
    slider.value = String(Number(slider.value) + 1);
    show().then(() => { if (timer) timer = setTimeout(step, 300); });
  };
  play.addEventListener('click', () => {
    if (timer) { stop(); return; }
    if (Number(slider.value) >= D.epochs.length - 1) slider.value = '0';
    play.innerHTML = '&#10074;&#10074; pause';
    timer = -1;
    show().then(() => { if (timer) timer = setTimeout(step, 300); });
  });
  const tip = document.getElementById('tip');
  let mouse = {clientX: 0, clientY: 0};
  document.addEventListener('mousemove', (ev) => { mouse = ev; });
  gd.on('plotly_hover', (ev) => {
    const pt = ev.points.find((q) => q.data.meta && q.data.meta.role === 'class');
    if (!pt) return;
    const p = D.panels[pt.data.meta.panel], s = D.series[p.series], src = sources[s.src];
    const d = decode(p.series, epochOf(p.series, Number(document.body.dataset.epoch)));
    const i = pt.customdata, label = src.labels[i], pred = d.pred[i];
    const img = document.getElementById('tip-img');
    if (src.sprite) {
      const [h, w] = src.size, k = 56 / w, col = i % src.cols, row = Math.floor(i / src.cols);  // the 56-px box
      img.style.display = 'block';
      img.style.backgroundImage = `url(${src.sprite})`;
      img.style.backgroundSize = `${src.cols * w * k}px auto`;
      img.style.backgroundPosition = `-${col * w * k}px -${row * h * k}px`;
    } else img.style.display = 'none';
    const wrong = pred !== label ? ' class="wrong"' : '';
    const name = (k) => esc(D.classes[k]);  // folder names are the user's: shown as text, never as markup
    document.getElementById('tip-text').innerHTML = `${esc(s.name)}, test image #${src.index[i]}<br>label ${name(label)}` +
      `<br><span${wrong}>predicted ${name(pred)}</span><br>` + ((d.ep.unseen || []).includes(label) ?
      'a class unseen in training' : `${d.ang[i].toFixed(1)}° from W of ${name(label)}`);
    const m = ev.event && ev.event.clientX !== undefined ? ev.event : mouse;  // a 3-D scene's event has no position
    tip.style.left = `${m.clientX + 14}px`;
    tip.style.top = `${m.clientY + 14}px`;
    tip.style.display = 'flex';
  });
  gd.on('plotly_unhover', () => { tip.style.display = 'none'; });
  window.arcdist = {data: D, render, decode, show};
  show().then(() => { document.body.dataset.ready = '1'; });
})();
