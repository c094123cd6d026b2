// The viewer page: NiiVue slice views with the INR overlay and slice painting, and the
// server-rendered 3-D view on a canvas. Protocol: neumours/viewer/protocol.py; the editing
// model (pending corrections, Refine consumes them, Undo refine gives them back): docs/viewer.md.
import { Niivue } from "/static/niivue.js";

const $ = (id) => document.getElementById(id);
const stats = $("stats"), progress = $("progress");
const PAINT_BACKGROUND = 4;
// One colour table for the overlay's labels and the pens that paint them (NCR, ED, ET), and the
// background pen (a colour of its own: the overlay draws background as nothing).
const LABELS = { 1: "NCR", 2: "ED", 3: "ET" };
const COLOURS = { 1: [230, 51, 51], 2: [51, 204, 77], 3: [255, 217, 26], 4: [70, 130, 255] };
const MODALITY_NAMES = { t1n: "T1", t1c: "T1c", t2w: "T2", t2f: "FLAIR" };
let info = null, ws = null, overlayKind = "inr", editor = false, refining = false;
const hidden = new Set();
const cam = { azimuth: 30, elevation: 20, zoom: 1.0, target: [0, 0, 0] };
const CAMERA_HOME = JSON.parse(JSON.stringify(cam));
let dragging = false, frameTimes = [], latencies = [], msPerPixel = null, lastRequest = null;
const sent = new Map();
let nextId = 1, strokes = 0;
// ?scale=F caps the 3-D view's size at F times the canvas; below the cap the size follows the measured
// render time (about STILL_MS a frame when still, DRAG_MS while dragging).
const scaleCap = Math.min(1, Math.max(0.05, Number(new URLSearchParams(location.search).get("scale")) || 1));
const STILL_MS = 800, DRAG_MS = 120;

// The crosshair's width in percent of the field of view: NiiVue's default (one voxel) is a thick bar on
// small volumes (6 px on a 48-voxel phantom at 1600 x 900).
const CROSSHAIR_PERCENT = 0.5;
const nv = new Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: true, dragAndDropEnabled: false,
                        crosshairWidthUnit: "percent", crosshairWidth: CROSSHAIR_PERCENT });
await nv.attachTo("gl");
nv.setSliceType(nv.sliceTypeMultiplanar);
nv.drawOpacity = 1.0;  // painted voxels show the pen's colour itself, the overlay's colour of that label

// The legend's hidden labels are left out of the overlay, not of the pens (a stroke stays visible).
function colormap(indices, pens = false) {
  const c = (i, k) => (i === 0 ? 0 : COLOURS[i][k]);
  return { R: indices.map((i) => c(i, 0)), G: indices.map((i) => c(i, 1)), B: indices.map((i) => c(i, 2)),
           A: indices.map((i) => (i === 0 || (!pens && hidden.has(i)) ? 0 : 255)), I: indices,
           labels: indices.map((i) => (i === 0 ? "" : i === PAINT_BACKGROUND ? "background" : LABELS[i])) };
}

// ------------------------------------------------------------------ errors and the connection
function showError(text, kind = "error") {
  const banner = $("error");
  banner.querySelector("span").textContent = text;
  banner.className = kind;
  banner.hidden = false;
}
function hideError() { $("error").hidden = true; }
$("error").querySelector("button").onclick = hideError;

// ``quiet``: a message the page makes by itself (a frame request, the cursor probe, view settings), which
// the page sends again once reconnected; a user's request says on the page that it was not sent.
function send(message, quiet = false) {
  if (!ws || ws.readyState !== 1) {
    if (!quiet) showError("not connected to the server: the request was not sent (reconnecting…)");
    return false;
  }
  ws.send(typeof message === "string" || message instanceof Uint8Array ? message : JSON.stringify(message));
  return true;
}

// The 3-D view's settings this page chose (a new socket starts from the server's defaults).
function viewSettings() {
  return { type: "settings", overlay: overlayKind, hidden_labels: [...hidden], threshold: Number($("threshold").value) };
}

let retry = 1000, queue = Promise.resolve();
function connect() {
  ws = new WebSocket(`${location.origin.replace("http", "ws")}/ws${location.search}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    retry = 1000; hideError();
    send(viewSettings(), true);
    // A reconnect: the paint not yet sent goes to the server first (it comes back as the case's pending paint).
    if (editor && info && paintCounts().some((n, i) => i > 0 && n > 0)) send(strokesMessage());
    send({ type: "hello" });
  };
  ws.onclose = (event) => {
    const why = event.code === 1009 ? "a message was larger than the server accepts (--max-upload-mb)"
      : event.code === 1006 || event.code === 1000 ? "the connection closed" : `closed (${event.code})`;
    stats.textContent = "disconnected";
    showError(`disconnected from the server: ${why}; reconnecting in ${Math.round(retry / 1000)} s…`, "warning");
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 10000);
  };
  // Messages are handled one after another (a case's slices load before its pending paint is drawn).
  ws.onmessage = (event) => { queue = queue.then(() => handle(event)).catch((e) => showError(`page error: ${e}`)); };
}

async function handle(event) {
  if (typeof event.data !== "string") {
    const [header, payload] = unpack(event.data);
    if (header.type === "frame") await showFrame(header, payload);
    else if (header.type === "labels") applyLabels(header, payload);
    else if (header.type === "pending_paint") restorePaint(header, payload);
    else if (header.type === "pending_mask") mask3d.restore(header, payload);
    return;
  }
  const m = JSON.parse(event.data);
  if (m.type === "role") {
    editor = m.editor;
    $("role").textContent = editor ? (m.clients > 1 ? `editing (+${m.clients - 1} viewing)` : "editing")
      : "view only: another page is editing";
    $("role").className = editor ? "editor" : "viewer";
    lockControls();
  } else if (m.type === "case") {
    info = m;
    $("case").innerHTML = m.cases.map((c) => `<option${c === m.case ? " selected" : ""}>${c}</option>`).join("");
    $("anchor").disabled = m.cases.length < 2;  // the anchor samples the other cases of the dataset
    if (m.cases.length < 2) $("anchor").checked = false;
    mask3d.clear();
    strokes = 0;
    await loadSlices();
    showStatus(m);
    requestRender();
  } else if (m.type === "status") {
    showStatus(m);
  } else if (m.type === "busy") {
    refining = m.refining;
    $("bar").hidden = !refining;
    lockControls();
  } else if (m.type === "progress") {
    $("bar").max = m.steps; $("bar").value = m.step + 1;
    progress.textContent = `${m.stage} step ${m.step + 1}/${m.steps} · loss ${m.loss.toFixed(4)} · ` +
      `${m.elapsed.toFixed(1)} s, about ${m.remaining.toFixed(1)} s left`;
  } else if (m.type === "refined" || m.type === "undone") {
    progress.textContent = m.type === "refined"
      ? `refined (${m.stages.join(" + ")}) in ${m.seconds.toFixed(2)} s, loss ${m.first_loss.toFixed(4)} → ${m.last_loss.toFixed(4)}; the corrections were applied and are no longer pending`
      : `undone${m.case && info && m.case !== info.case ? ` (a refinement of ${m.case}: its corrections are pending there again)` : ": its corrections are pending again"}`;
    // The INR overlay was patched in place by the "labels" crop; derived overlays are reloaded.
    if (overlayKind !== "inr" && overlayKind !== "none") await reloadKeepingView();
    if (m.type === "refined") { nv.createEmptyDrawing(); strokes = 0; mask3d.clear(); updatePending(); }
    nv.createOnLocationChange();  // the cursor readout shows the new labels
    requestRender();
  } else if (m.type === "cancelled") {
    progress.textContent = `${m.message}; the corrections are still pending`;
  } else if (m.type === "saved") {
    progress.textContent = `saved ${m.checkpoint} (${m.refinements} refinement(s) recorded) and ${m.segmentation}`;
  } else if (m.type === "probe") {
    const values = Object.entries(m.intensities).map(([k, v]) => `${MODALITY_NAMES[k] || k} ${v.toFixed(1)}`).join(" · ");
    $("cursor").textContent = `voxel ${m.voxel.join(", ")} · ${values} · INR ${m.label}` +
      (m.ground_truth ? ` (truth ${m.ground_truth})` : "");
  } else if (m.type === "error") {
    showError(m.request ? `${m.request}: ${m.message}` : m.message);
    if (m.request === "refine" || m.request === "strokes") progress.textContent = "";
  }
}

function pack(header, payload) {
  const head = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(4 + head.length + payload.length);
  new DataView(out.buffer).setUint32(0, head.length, true);
  out.set(head, 4); out.set(payload, 4 + head.length);
  return out;
}

function unpack(buffer) {
  const n = new DataView(buffer).getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, n)));
  return [header, new Uint8Array(buffer, 4 + n)];
}

// ------------------------------------------------------------------ slice views
async function loadSlices() {
  const modality = $("modality").value;
  const vols = [{ url: `/api/volume/${info.case}/${modality}`, name: `${modality}.nii.gz` }];
  if (overlayKind !== "none") {
    vols.push({ url: `/api/volume/${info.case}/${overlayKind}`, name: `${overlayKind}.nii.gz`,
                opacity: Number($("opacity").value), colormap: overlayKind === "probabilities" ? "violet" : "gray" });
  }
  if (overlayKind === "none" && nv.volumes.length > 1) {
    // NiiVue's 3-D tile keeps the last overlay's texture when no overlay is loaded: blank it first.
    nv.setOpacity(1, 0);
    nv.updateGLVolume();
  }
  await nv.loadVolumes(vols);
  applyWindow();
  if (nv.volumes.length > 1) {
    if (overlayKind === "probabilities") {
      // Only voxels above the threshold are drawn: tumour, not the whole field.
      nv.volumes[1].cal_min = Number($("threshold").value); nv.volumes[1].cal_max = 1.0;
    } else {
      nv.volumes[1].setColormapLabel(colormap([0, 1, 2, 3]));
    }
  }
  nv.setDrawColormap(colormap([0, 1, 2, 3, PAINT_BACKGROUND], true));  // pens in the overlay's label colours
  nv.updateGLVolume();
  nv.createEmptyDrawing();
  strokes = 0;
  updatePending();
  nv.createOnLocationChange();  // the cursor readout of the crosshair's voxel
}

function applyWindow() {
  const v = nv.volumes[0], preset = $("window").value;
  if (!v || !info) return;
  if (preset === "brain") [v.cal_min, v.cal_max] = info.windows[$("modality").value];
  else if (preset === "full") [v.cal_min, v.cal_max] = [v.global_min, v.global_max];
  else [v.cal_min, v.cal_max] = [v.robust_min, v.robust_max];
  nv.updateGLVolume();
}

// Reload the slice volumes, keeping the crosshair (and so the slices shown) and the drawing where they were.
async function reloadKeepingView() {
  const where = nv.scene.crosshairPos.slice(), drawing = nv.drawBitmap ? nv.drawBitmap.slice() : null;
  await loadSlices();
  if (drawing && nv.drawBitmap && drawing.length === nv.drawBitmap.length) {
    nv.drawBitmap.set(drawing); nv.drawAddUndoBitmap(); nv.refreshDrawing(true);  // the undo baseline: strokes since stay undoable
  }
  nv.scene.crosshairPos = where;
  nv.drawScene();
  updatePending();
}

// A changed crop of the INR labels (x slowest, as protocol.py says) written into the overlay in place.
function applyLabels(header, crop) {
  if (overlayKind !== "inr" || nv.volumes.length < 2) return;
  const img = nv.volumes[1].img, [nx, ny] = info.shape, [x0, y0, z0] = header.origin, [sx, sy, sz] = header.shape;
  for (let x = 0; x < sx; x++)
    for (let y = 0; y < sy; y++)
      for (let z = 0; z < sz; z++)
        img[(x0 + x) + (y0 + y) * nx + (z0 + z) * nx * ny] = crop[(x * sy + y) * sz + z];
  nv.updateGLVolume();
}

// NiiVue keeps its drawing in RAS order (a flipped or permuted file, e.g. BraTS's LPS storage, is
// reoriented for display); img2RASstart/img2RASstep map each RAS voxel to the file's flat index, as
// NiiVue itself does when it saves a drawing. visit(rasIndex, fileIndex) for every voxel.
function forEachVoxel(visit) {
  const image = nv.volumes[0], dimsRAS = image.dimsRAS, start = image.img2RASstart, step = image.img2RASstep;
  let ras = 0;
  for (let rz = 0; rz < dimsRAS[3]; rz++)
    for (let ry = 0; ry < dimsRAS[2]; ry++)
      for (let rx = 0; rx < dimsRAS[1]; rx++, ras++)
        visit(ras, start[0] + rx * step[0] + start[1] + ry * step[1] + start[2] + rz * step[2]);
}

// The whole painting as one crop (x slowest) in the file's voxel order, replacing the server's pending paint.
function strokesMessage() {
  const bitmap = nv.drawBitmap, [nx, ny, nz] = info.shape;
  const painted = new Map();  // file flat index -> pen value
  if (bitmap) forEachVoxel((ras, i) => { if (bitmap[ras]) painted.set(i, bitmap[ras]); });
  if (!painted.size) return pack({ type: "strokes", case: info.case, origin: [0, 0, 0], shape: [1, 1, 1], replace: true }, new Uint8Array(1));
  let lo = [nx, ny, nz], hi = [-1, -1, -1];
  for (const i of painted.keys()) {
    const x = i % nx, y = Math.floor(i / nx) % ny, z = Math.floor(i / (nx * ny));
    lo = [Math.min(lo[0], x), Math.min(lo[1], y), Math.min(lo[2], z)];
    hi = [Math.max(hi[0], x), Math.max(hi[1], y), Math.max(hi[2], z)];
  }
  const shape = [hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1];
  const crop = new Uint8Array(shape[0] * shape[1] * shape[2]);
  for (const [i, value] of painted) {
    const x = i % nx - lo[0], y = Math.floor(i / nx) % ny - lo[1], z = Math.floor(i / (nx * ny)) - lo[2];
    crop[(x * shape[1] + y) * shape[2] + z] = value;
  }
  return pack({ type: "strokes", case: info.case, origin: lo, shape, replace: true }, crop);
}

// Pending paint from the server (after a case opens or Undo refine) drawn into NiiVue's drawing, under any strokes.
function restorePaint(header, crop) {
  if (!info || header.case !== info.case) return;
  if (!nv.drawBitmap) nv.createEmptyDrawing();
  const bitmap = nv.drawBitmap, [nx, ny] = info.shape, [x0, y0, z0] = header.origin, [sx, sy, sz] = header.shape;
  forEachVoxel((ras, i) => {
    const x = i % nx - x0, y = Math.floor(i / nx) % ny - y0, z = Math.floor(i / (nx * ny)) - z0;
    if (x < 0 || y < 0 || z < 0 || x >= sx || y >= sy || z >= sz || bitmap[ras]) return;
    bitmap[ras] = crop[(x * sy + y) * sz + z];
  });
  nv.drawAddUndoBitmap();  // undo stroke stops here: it never takes the restored paint away
  strokes = 0;
  nv.refreshDrawing(true);
  updatePending();
}

function paintCounts() {
  const counts = [0, 0, 0, 0, 0], bitmap = nv.drawBitmap;
  if (bitmap) for (let i = 0; i < bitmap.length; i++) if (bitmap[i]) counts[bitmap[i]]++;
  return counts;
}

// The pending corrections, as the page holds them until Refine.
function updatePending() {
  const counts = paintCounts(), total = counts[1] + counts[2] + counts[3] + counts[4];
  const parts = [1, 2, 3, 4].filter((p) => counts[p]).map((p) => `${p === 4 ? "background" : LABELS[p]} ${counts[p]}`);
  const mask = mask3d.pixels();
  const text = [total ? `slice paint ${total} voxels (${parts.join(", ")})` : "",
                mask ? `3-D strokes ${mask} pixels` : ""].filter(Boolean).join(" · ");
  $("pending").textContent = text || "none";
  $("pending").dataset.voxels = String(total);
  $("undo-stroke").disabled = !editor || refining || strokes === 0;
}

function showStatus(m) {
  $("history").textContent = `${m.refinements} refinement(s) applied, ${m.undo_depth} undoable` +
    (m.pending_elsewhere && m.pending_elsewhere.length ? ` · pending on ${m.pending_elsewhere.join(", ")}` : "");
  for (const [label, ml] of Object.entries(m.volumes_ml || {})) {
    const cell = document.querySelector(`#legend [data-ml='${label}']`);
    if (cell) cell.textContent = `${ml.toFixed(2)} mL`;
  }
}

// ------------------------------------------------------------------ 3-D view
function frameScale() {
  const canvas = $("view3d"), pixels = canvas.clientWidth * canvas.clientHeight;
  if (msPerPixel === null) return scaleCap;  // the server downscales the first frame to its time budget
  const target = dragging ? DRAG_MS : STILL_MS;
  return Math.min(scaleCap, Math.max(0.05, Math.sqrt(target / (msPerPixel * pixels))));
}

function requestRender() {
  const canvas = $("view3d"), scale = frameScale();
  const width = Math.max(8, Math.round(canvas.clientWidth * scale));
  const height = Math.max(8, Math.round(canvas.clientHeight * scale));
  const id = nextId++;
  sent.set(id, performance.now());
  lastRequest = { width, still: !dragging };
  send({ type: "render", id, camera: cam, width, height }, true);
}

async function showFrame(header, payload) {
  const t0 = sent.get(header.id);
  for (const id of [...sent.keys()]) if (id <= header.id) sent.delete(id);  // older requests were dropped as stale
  const bitmap = await createImageBitmap(new Blob([payload], { type: "image/jpeg" }));
  const canvas = $("view3d");
  canvas.width = canvas.clientWidth; canvas.height = canvas.clientHeight;
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  const now = performance.now();
  msPerPixel = header.render_ms / (header.width * header.height);
  frameTimes.push(now); frameTimes = frameTimes.slice(-10).filter((t) => now - t < 5000);
  if (t0 !== undefined) { latencies.push(now - t0); latencies = latencies.slice(-30); }
  const median = [...latencies].sort((a, b) => a - b)[Math.floor(latencies.length / 2)] || 0;
  // Frames per second over the last frames of the last 5 s (not "frames in the last second", which reads
  // 1 fps at any latency); a single frame (the view was still) says so.
  const span = frameTimes.length > 1 ? (frameTimes[frameTimes.length - 1] - frameTimes[0]) / 1000 : 0;
  const rate = span > 0 ? `${((frameTimes.length - 1) / span).toFixed(1)} fps` : "still";
  // Short enough for the row beside the cursor readout; the title says it in full.
  const latency = (median / 1000).toFixed(2), render = header.render_ms.toFixed(0);
  stats.textContent = `${rate} · ${latency} s · ${header.width}×${header.height}${header.downscaled ? "↓" : ""}` +
    ` · ${render} ms ${header.encoder}`;
  stats.title = `${rate}; latency ${latency} s; frame ${header.width}×${header.height}` +
    `${header.downscaled ? " (downscaled to the render budget)" : ""}; render ${render} ms; encoder ${header.encoder}`;
  canvas.dataset.frames = String(Number(canvas.dataset.frames || 0) + 1);
  // Sharper when still, once per camera, unless the server already downscaled to its budget.
  if (!dragging && !header.downscaled && lastRequest && lastRequest.still
      && header.width < Math.round(canvas.clientWidth * frameScale()) - 1 && sent.size === 0) {
    lastRequest = null;
    requestRender();
  }
}

// 3-D strokes ("tumour" / "not tumour") drawn over the 3-D view for the camera they were drawn with;
// sent as a mask crop (protocol.py: values NOT_TUMOUR 0, TUMOUR 1, DONT_CARE 255) at the render size.
const NOT_TUMOUR = 0, TUMOUR = 1, DONT_CARE = 255;
const TUMOUR_INK = "rgba(255,70,70,0.55)", OTHER_INK = "rgba(70,150,255,0.55)";
const mask3d = {
  mode: "rotate", strokes: [], camera: null, restored: null, canvas: $("strokes3d"),
  clear() {
    this.strokes = []; this.camera = null; this.restored = null;
    const c = this.canvas; c.getContext("2d").clearRect(0, 0, c.width, c.height);
    updatePending();
  },
  pixels() { return this.strokes.length ? this.strokes.reduce((n, s) => n + s.points.length, 0) : (this.restored ? this.restored.count : 0); },
  begin(x, y) {
    if (!this.camera) this.camera = JSON.parse(JSON.stringify(cam));
    this.strokes.push({ tumour: this.mode === "tumour", points: [[x, y]] });
  },
  extend(x, y) {
    const stroke = this.strokes[this.strokes.length - 1];
    stroke.points.push([x, y]);
    const c = this.canvas, g = c.getContext("2d");
    if (c.width !== c.clientWidth || c.height !== c.clientHeight) { c.width = c.clientWidth; c.height = c.clientHeight; this.redraw(g, 1, TUMOUR_INK, OTHER_INK); return; }
    this.drawStroke(g, stroke, 1, stroke.tumour ? TUMOUR_INK : OTHER_INK);
  },
  drawStroke(g, stroke, scale, colour) {
    g.strokeStyle = colour; g.lineWidth = Math.max(1, 14 * scale); g.lineCap = g.lineJoin = "round";
    g.beginPath();
    stroke.points.forEach(([x, y], i) => (i ? g.lineTo(x * scale, y * scale) : g.moveTo(x * scale, y * scale)));
    if (stroke.points.length === 1) g.lineTo(stroke.points[0][0] * scale + 0.01, stroke.points[0][1] * scale);
    g.stroke();
  },
  redraw(g, scale, tumourColour, otherColour) {
    if (this.restored) {  // a mask given back by Undo refine, drawn at this canvas's size
      const r = this.restored, sx = g.canvas.width / r.width, sy = g.canvas.height / r.height;
      for (let i = 0; i < r.values.length; i++) {
        if (r.values[i] === DONT_CARE) continue;
        g.fillStyle = r.values[i] === TUMOUR ? tumourColour : otherColour;
        g.fillRect((i % r.width) * sx, Math.floor(i / r.width) * sy, Math.ceil(sx), Math.ceil(sy));
      }
    }
    for (const s of this.strokes) this.drawStroke(g, s, scale, s.tumour ? tumourColour : otherColour);
  },
  // A pending mask from the server: its camera becomes the view's (the mask belongs to it).
  restore(header, crop) {
    if (!info || header.case !== info.case) return;
    const values = new Uint8Array(header.width * header.height).fill(DONT_CARE);
    const [r0, c0] = header.origin, [h, w] = header.shape;
    for (let r = 0; r < h; r++) values.set(crop.subarray(r * w, (r + 1) * w), (r0 + r) * header.width + c0);
    this.strokes = [];
    this.restored = { width: header.width, height: header.height, values, count: crop.filter((v) => v !== DONT_CARE).length };
    Object.assign(cam, JSON.parse(JSON.stringify(header.camera)));
    this.camera = JSON.parse(JSON.stringify(header.camera));
    const c = this.canvas; c.width = c.clientWidth; c.height = c.clientHeight;
    this.redraw(c.getContext("2d"), 1, TUMOUR_INK, OTHER_INK);
    updatePending();
    requestRender();
  },
  message() {
    if (!this.strokes.length && !this.restored) return null;
    const view = $("view3d");
    const width = this.restored ? this.restored.width : Math.max(8, Math.round(view.clientWidth * scaleCap));
    const height = this.restored ? this.restored.height : Math.max(8, Math.round(view.clientHeight * scaleCap));
    const off = new OffscreenCanvas(width, height), g = off.getContext("2d");
    this.redraw(g, width / view.clientWidth, "#ff0000", "#0000ff");
    const rgba = g.getImageData(0, 0, width, height).data;
    const values = new Uint8Array(width * height).fill(DONT_CARE);
    let r0 = height, c0 = width, r1 = -1, c1 = -1;
    for (let i = 0; i < width * height; i++) {
      if (rgba[4 * i + 3] < 128) continue;
      values[i] = rgba[4 * i] > rgba[4 * i + 2] ? TUMOUR : NOT_TUMOUR;
      const r = Math.floor(i / width), c = i % width;
      r0 = Math.min(r0, r); r1 = Math.max(r1, r); c0 = Math.min(c0, c); c1 = Math.max(c1, c);
    }
    if (r1 < 0) return null;
    const h = r1 - r0 + 1, w = c1 - c0 + 1, crop = new Uint8Array(h * w);
    for (let r = 0; r < h; r++) crop.set(values.subarray((r0 + r) * width + c0, (r0 + r) * width + c0 + w), r * w);
    return pack({ type: "mask", camera: this.camera, width, height, origin: [r0, c0], shape: [h, w] }, crop);
  },
};
mask3d.canvas.addEventListener("pointerdown", (e) => {
  const b = mask3d.canvas.getBoundingClientRect();
  mask3d.canvas.setPointerCapture(e.pointerId);
  mask3d.begin(e.clientX - b.left, e.clientY - b.top);
  mask3d.extend(e.clientX - b.left, e.clientY - b.top);
});
mask3d.canvas.addEventListener("pointermove", (e) => {
  if (!(e.buttons & 1) || !mask3d.strokes.length) return;
  const b = mask3d.canvas.getBoundingClientRect();
  mask3d.extend(e.clientX - b.left, e.clientY - b.top);
});
mask3d.canvas.addEventListener("pointerup", () => updatePending());
for (const button of document.querySelectorAll("button.mode")) {
  button.addEventListener("click", () => {
    document.querySelectorAll("button.mode").forEach((b) => b.classList.remove("on"));
    button.classList.add("on");
    mask3d.mode = button.dataset.mode;
    mask3d.canvas.classList.toggle("active", mask3d.mode !== "rotate");
  });
}
$("clear-3d").onclick = () => mask3d.clear();

const view3d = $("view3d");
let last = null;
view3d.addEventListener("pointerdown", (e) => { dragging = true; last = [e.clientX, e.clientY, e.shiftKey]; view3d.setPointerCapture(e.pointerId); });
view3d.addEventListener("pointermove", (e) => {
  if (!dragging) return;
  const dx = e.clientX - last[0], dy = e.clientY - last[1];
  last = [e.clientX, e.clientY];
  if (mask3d.strokes.length || mask3d.restored) mask3d.clear();  // strokes belong to the camera they were drawn with
  if (e.shiftKey) { cam.target[0] -= dx * 0.003; cam.target[1] += dy * 0.003; }
  else { cam.azimuth += dx * 0.5; cam.elevation = Math.max(-89, Math.min(89, cam.elevation + dy * 0.5)); }
  requestRender();
});
view3d.addEventListener("pointerup", () => { dragging = false; requestRender(); });
view3d.addEventListener("wheel", (e) => { e.preventDefault(); mask3d.clear(); cam.zoom = Math.max(0.1, Math.min(20, cam.zoom * Math.exp(-e.deltaY * 0.001))); requestRender(); });
function resetCamera() { mask3d.clear(); Object.assign(cam, JSON.parse(JSON.stringify(CAMERA_HOME))); requestRender(); }
$("reset-camera").onclick = resetCamera;

// ------------------------------------------------------------------ pens, legend, controls
function choosePen(pen) {
  document.querySelectorAll("button.pen").forEach((b) => b.classList.toggle("on", Number(b.dataset.pen) === pen));
  nv.setDrawingEnabled(pen >= 0);
  if (pen >= 0) nv.setPenValue(pen, $("fill").checked);
  nv.setCrosshairWidth(pen >= 0 ? 0 : CROSSHAIR_PERCENT);  // the crosshair follows the pen: hidden while painting, not over the stroke
  nv.drawScene();
}
for (const button of document.querySelectorAll("button.pen")) button.addEventListener("click", () => choosePen(Number(button.dataset.pen)));
for (const [pen, rgb] of Object.entries(COLOURS)) {
  document.querySelectorAll(`[data-swatch='${pen}']`).forEach((s) => { s.style.background = `rgb(${rgb.join(",")})`; });
}
$("brush").oninput = (e) => { nv.opts.penSize = Number(e.target.value); $("brush-size").textContent = e.target.value; };
$("fill").onchange = () => { if (nv.opts.drawingEnabled) nv.setPenValue(nv.opts.penValue, $("fill").checked); };
nv.opts.penSize = Number($("brush").value);
nv.onDrawingChanged = (action) => {
  if (action === "draw") strokes = Math.min(strokes + 1, nv.opts.maxDrawUndoBitmaps - 1);
  updatePending();
};
// NiiVue's undo is a ring: past the first stroke it would wrap round to the last; the count stops it.
function undoStroke() { if (strokes > 0) { nv.drawUndo(); strokes--; updatePending(); } }
$("undo-stroke").onclick = undoStroke;
for (const box of document.querySelectorAll("#legend input[type=checkbox]")) {
  box.onchange = () => {
    const label = Number(box.dataset.label);
    if (box.checked) hidden.delete(label); else hidden.add(label);
    if (nv.volumes.length > 1 && overlayKind !== "probabilities") { nv.volumes[1].setColormapLabel(colormap([0, 1, 2, 3])); nv.updateGLVolume(); }
    send(viewSettings(), true);
    requestRender();
  };
}

function sendRefine() {
  // The page's whole painting replaces the server's pending paint, then the mask (or none), then Refine:
  // the server runs them in this order.
  send(strokesMessage());
  const mask = mask3d.message();
  send(mask || { type: "clear", what: "mask" });
  send({ type: "refine", steps: Number($("steps").value), lr: Number($("lr").value), keep: Number($("keep").value),
         anchor: $("anchor").checked });
  progress.textContent = "refining…";
}
$("refine").onclick = () => { hideError(); sendRefine(); };
$("cancel").onclick = () => send({ type: "cancel" });
$("undo").onclick = () => send({ type: "undo" });
$("save").onclick = () => send({ type: "save" });
$("clear").onclick = () => { nv.createEmptyDrawing(); strokes = 0; mask3d.clear(); send({ type: "clear" }); updatePending(); };
$("overlay").onchange = async (e) => {
  overlayKind = e.target.value;
  $("threshold-box").hidden = overlayKind !== "probabilities";
  send(viewSettings(), true);
  await reloadKeepingView();
  requestRender();
};
$("threshold").oninput = (e) => {
  $("threshold-value").textContent = Number(e.target.value).toFixed(2);
  if (overlayKind === "probabilities" && nv.volumes.length > 1) { nv.volumes[1].cal_min = Number(e.target.value); nv.updateGLVolume(); }
  send(viewSettings(), true);
  if (overlayKind === "probabilities") requestRender();
};
$("opacity").oninput = (e) => { if (nv.volumes.length > 1) nv.setOpacity(1, Number(e.target.value)); };
$("modality").onchange = () => reloadKeepingView();
$("window").onchange = applyWindow;
$("case").onchange = (e) => {
  // The painting of the case being left stays pending there (the server keeps it per case).
  send(strokesMessage());
  const mask = mask3d.message();
  send(mask || { type: "clear", what: "mask" });
  send({ type: "open", case: e.target.value });
};

function lockControls() {
  const editing = editor && !refining;
  for (const el of document.querySelectorAll(".edit")) el.disabled = !editing;
  $("cancel").disabled = !(editor && refining);
  $("case").disabled = !editing;
  if (!editing && nv.opts.drawingEnabled) choosePen(-1);
  updatePending();
}

// Cursor readout: the voxel under the crosshair (file order), every modality's intensity and the labels.
let probeTimer = null;
nv.onLocationChange = (data) => {
  const vox = data.values && data.values[0] && data.values[0].vox;
  if (!vox || !info) return;
  clearTimeout(probeTimer);
  probeTimer = setTimeout(() => send({ type: "probe", voxel: Array.from(vox, (v) => Math.round(v)) }, true), 60);
};

// Keyboard shortcuts (docs/viewer.md): 1-4 pens, 0 eraser, Escape pen off, z undo stroke,
// Ctrl+Z undo refine, arrow up/down or PageUp/PageDown the axial slice, r camera reset.
document.addEventListener("keydown", (e) => {
  if (e.target.closest && e.target.closest("input, select, textarea")) return;
  const pens = { 1: 1, 2: 2, 3: 3, 4: PAINT_BACKGROUND, 0: 0 };
  if (e.key in pens && !e.ctrlKey && !e.metaKey) { if (editor && !refining) choosePen(pens[e.key]); }
  else if (e.key === "Escape") choosePen(-1);
  else if ((e.key === "z" || e.key === "Z") && (e.ctrlKey || e.metaKey)) { if (editor && !refining) send({ type: "undo" }); }
  else if (e.key === "z") undoStroke();
  else if (e.key === "ArrowUp" || e.key === "PageUp") nv.moveCrosshairInVox(0, 0, 1);
  else if (e.key === "ArrowDown" || e.key === "PageDown") nv.moveCrosshairInVox(0, 0, -1);
  else if (e.key === "r") resetCamera();
  else return;
  e.preventDefault();
});

// The crosshair to the overlay's tumour: the axial slice with most of it, at its centre there (RAS voxels).
// Returns that voxel, or null when the overlay shows no tumour.
function focusTumour() {
  if (nv.volumes.length < 2) return null;
  const img = nv.volumes[1].img, [, nx, ny, nz] = nv.volumes[0].dimsRAS;
  const cut = overlayKind === "probabilities" ? Number($("threshold").value) : 0.5;  // labels 1..3, or p >= threshold
  const count = new Float64Array(nz), sx = new Float64Array(nz), sy = new Float64Array(nz);
  forEachVoxel((ras, i) => {
    if (!(img[i] >= cut)) return;
    const z = Math.floor(ras / (nx * ny));
    count[z]++; sx[z] += ras % nx; sy[z] += Math.floor(ras / nx) % ny;
  });
  let best = 0;
  for (let z = 1; z < nz; z++) if (count[z] > count[best]) best = z;
  if (!count[best]) return null;
  const vox = [Math.round(sx[best] / count[best]), Math.round(sy[best] / count[best]), best];
  nv.scene.crosshairPos = nv.vox2frac(vox);
  nv.drawScene();
  nv.createOnLocationChange();
  return vox;
}

// For scripts and the browser test: the NiiVue instance, the 3-D camera and strokes, the pending counts.
window.neumoursViewer = { nv, cam, mask3d, paintCounts, focusTumour, COLOURS, caseId: () => info && info.case,
                          state: () => ({ editor, refining, strokes }) };
connect();
