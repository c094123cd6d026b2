// The viewer page: NiiVue slice views with the INR overlay and slice painting, and the
// server-rendered 3-D view on a canvas. Protocol: neumours/viewer/protocol.py.
import { Niivue } from "/static/niivue.js";

const $ = (id) => document.getElementById(id);
const stats = $("stats"), progress = $("progress");
const PAINT_BACKGROUND = 4;
let info = null, ws = null, overlayKind = "inr";
const cam = { azimuth: 30, elevation: 20, zoom: 1.0, target: [0, 0, 0] };
let dragging = false, lastRender = 0, pending = false, frameTimes = [], latencies = [];
const sent = new Map();
let nextId = 1;
// ?scale=F renders the 3-D view at F times the canvas size (below 1 for a slow device, e.g. the CPU).
const baseScale = Math.min(1, Math.max(0.05, Number(new URLSearchParams(location.search).get("scale")) || 1));

const nv = new Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: true, dragAndDropEnabled: false });
await nv.attachTo("gl");
nv.setSliceType(nv.sliceTypeMultiplanar);

function labelColormap() {
  return { R: [0, 230, 51, 255], G: [0, 51, 204, 217], B: [0, 51, 77, 26], A: [0, 255, 255, 255],
           I: [0, 1, 2, 3], labels: ["background", "NCR", "ED", "ET"] };
}

async function loadSlices() {
  const vols = [{ url: `/api/volume/${info.case}/t1c`, name: "t1c.nii.gz" }];
  if (overlayKind !== "none") {
    vols.push({ url: `/api/volume/${info.case}/${overlayKind}`, name: `${overlayKind}.nii.gz`,
                opacity: Number($("opacity").value), colormap: overlayKind === "probabilities" ? "warm" : "gray" });
  }
  await nv.loadVolumes(vols);
  if (nv.volumes.length > 1 && overlayKind !== "probabilities") {
    nv.volumes[1].setColormapLabel(labelColormap());
    nv.updateGLVolume();
  }
  nv.createEmptyDrawing();
}

// Reload the slice volumes, keeping the crosshair (and so the slices shown) where it was.
async function reloadKeepingView() {
  const where = nv.scene.crosshairPos.slice();
  await loadSlices();
  nv.scene.crosshairPos = where;
  nv.drawScene();
}

// A changed crop of the INR labels (x slowest, as protocol.py says) written into the overlay in place.
async function applyLabels(header, crop) {
  if (overlayKind !== "inr" || nv.volumes.length < 2) return;
  const img = nv.volumes[1].img, [nx, ny] = info.shape, [x0, y0, z0] = header.origin, [sx, sy, sz] = header.shape;
  for (let x = 0; x < sx; x++)
    for (let y = 0; y < sy; y++)
      for (let z = 0; z < sz; z++)
        img[(x0 + x) + (y0 + y) * nx + (z0 + z) * nx * ny] = crop[(x * sy + y) * sz + z];
  nv.updateGLVolume();
}

function send(message) { if (ws && ws.readyState === 1) ws.send(JSON.stringify(message)); }

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

function requestRender() {
  const canvas = $("view3d");
  const scale = baseScale * (dragging ? 0.5 : 1.0);  // lower resolution while dragging
  const width = Math.max(8, Math.round(canvas.clientWidth * scale));
  const height = Math.max(8, Math.round(canvas.clientHeight * scale));
  const id = nextId++;
  sent.set(id, performance.now());
  send({ type: "render", id, camera: cam, width, height });
}

// Painted voxels of NiiVue's drawing layer as one crop (x slowest), the box around them, in the
// file's own voxel order. NiiVue keeps its drawing in RAS order (a flipped or permuted file, e.g.
// BraTS's LPS storage, is reoriented for display); img2RASstart/img2RASstep map each RAS voxel back
// to the file's flat index, as NiiVue itself does when it saves a drawing.
function strokesMessage() {
  const bitmap = nv.drawBitmap;
  if (!bitmap) return null;
  const image = nv.volumes[0], dimsRAS = image.dimsRAS, start = image.img2RASstart, step = image.img2RASstep;
  const [nx, ny, nz] = info.shape;
  const painted = new Map();  // native flat index -> pen value
  let ras = 0;
  for (let rz = 0; rz < dimsRAS[3]; rz++)
    for (let ry = 0; ry < dimsRAS[2]; ry++)
      for (let rx = 0; rx < dimsRAS[1]; rx++, ras++)
        if (bitmap[ras]) painted.set(start[0] + rx * step[0] + start[1] + ry * step[1] + start[2] + rz * step[2], bitmap[ras]);
  if (!painted.size) return null;
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
  return pack({ type: "strokes", case: info.case, origin: lo, shape }, crop);
}

function connect() {
  ws = new WebSocket(`${location.origin.replace("http", "ws")}/ws${location.search}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => send({ type: "hello" });
  ws.onclose = () => { stats.textContent = "disconnected"; };
  ws.onmessage = async (event) => {
    if (typeof event.data !== "string") {
      const [header, payload] = unpack(event.data);
      if (header.type === "frame") await showFrame(header, payload);
      else if (header.type === "labels") await applyLabels(header, payload);
      return;
    }
    const m = JSON.parse(event.data);
    if (m.type === "case") {
      info = m;
      $("case").innerHTML = m.cases.map((c) => `<option${c === m.case ? " selected" : ""}>${c}</option>`).join("");
      $("anchor").disabled = m.cases.length < 2;  // the anchor samples the other cases of the dataset
      if (m.cases.length < 2) $("anchor").checked = false;
      await loadSlices();
      requestRender();
    } else if (m.type === "progress") {
      progress.textContent = `${m.stage} step ${m.step + 1}/${m.steps} loss ${m.loss.toFixed(4)}`;
    } else if (m.type === "painted") {
      const mask = mask3d.message();
      if (mask) ws.send(mask); else sendRefine();
    } else if (m.type === "masked") {
      sendRefine();
    } else if (m.type === "refined" || m.type === "undone") {
      progress.textContent = m.type === "refined"
        ? `refined (${m.stages.join(" + ")}) in ${m.seconds.toFixed(2)} s, loss ${m.first_loss.toFixed(4)} → ${m.last_loss.toFixed(4)}`
        : "undone";
      // The INR overlay was patched in place by the "labels" crop; derived overlays are reloaded.
      if (overlayKind !== "inr" && overlayKind !== "none") await reloadKeepingView();
      nv.createEmptyDrawing();  // the strokes now live in the server's painting state
      mask3d.clear();
      requestRender();
    } else if (m.type === "saved") {
      progress.textContent = `saved ${m.segmentation}`;
    } else if (m.type === "error") {
      progress.textContent = `error: ${m.message}`;
    }
  };
}

async function showFrame(header, payload) {
  const t0 = sent.get(header.id);
  sent.delete(header.id);
  const bitmap = await createImageBitmap(new Blob([payload], { type: "image/jpeg" }));
  const canvas = $("view3d");
  canvas.width = canvas.clientWidth; canvas.height = canvas.clientHeight;
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  const now = performance.now();
  frameTimes.push(now); frameTimes = frameTimes.filter((t) => now - t < 1000);
  if (t0 !== undefined) { latencies.push(now - t0); latencies = latencies.slice(-30); }
  const median = [...latencies].sort((a, b) => a - b)[Math.floor(latencies.length / 2)] || 0;
  stats.textContent = `${frameTimes.length} fps · latency ${median.toFixed(0)} ms · ` +
    `${header.width}×${header.height} · render ${header.render_ms.toFixed(1)} ms (${header.encoder})`;
  canvas.dataset.frames = String(Number(canvas.dataset.frames || 0) + 1);
  if (!dragging && header.width < Math.round(canvas.clientWidth * baseScale) - 1) requestRender();  // full resolution when still
}

// 3-D strokes ("tumour" / "not tumour") drawn over the 3-D view for the camera they were drawn with;
// sent as a mask crop (protocol.py: values NOT_TUMOUR 0, TUMOUR 1, DONT_CARE 255) at the render size.
const NOT_TUMOUR = 0, TUMOUR = 1, DONT_CARE = 255;
const mask3d = {
  mode: "rotate", strokes: [], camera: null, canvas: $("strokes3d"),
  clear() {
    this.strokes = []; this.camera = null;
    const c = this.canvas; c.getContext("2d").clearRect(0, 0, c.width, c.height);
  },
  begin(x, y) {
    if (!this.camera) this.camera = JSON.parse(JSON.stringify(cam));
    this.strokes.push({ tumour: this.mode === "tumour", points: [[x, y]] });
  },
  extend(x, y) {
    const stroke = this.strokes[this.strokes.length - 1];
    stroke.points.push([x, y]);
    const c = this.canvas, g = c.getContext("2d");
    if (c.width !== c.clientWidth || c.height !== c.clientHeight) { c.width = c.clientWidth; c.height = c.clientHeight; this.redraw(g, 1, "rgba(255,70,70,0.55)", "rgba(70,150,255,0.55)"); return; }
    this.drawStroke(g, stroke, 1, stroke.tumour ? "rgba(255,70,70,0.55)" : "rgba(70,150,255,0.55)");
  },
  drawStroke(g, stroke, scale, colour) {
    g.strokeStyle = colour; g.lineWidth = Math.max(1, 14 * scale); g.lineCap = g.lineJoin = "round";
    g.beginPath();
    stroke.points.forEach(([x, y], i) => (i ? g.lineTo(x * scale, y * scale) : g.moveTo(x * scale, y * scale)));
    if (stroke.points.length === 1) g.lineTo(stroke.points[0][0] * scale + 0.01, stroke.points[0][1] * scale);
    g.stroke();
  },
  redraw(g, scale, tumourColour, otherColour) {
    for (const s of this.strokes) this.drawStroke(g, s, scale, s.tumour ? tumourColour : otherColour);
  },
  message() {
    if (!this.strokes.length) return null;
    const view = $("view3d");
    const width = Math.max(8, Math.round(view.clientWidth * baseScale));
    const height = Math.max(8, Math.round(view.clientHeight * baseScale));
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
  if (mask3d.strokes.length) mask3d.clear();  // strokes belong to the camera they were drawn with
  if (e.shiftKey) { cam.target[0] -= dx * 0.003; cam.target[1] += dy * 0.003; }
  else { cam.azimuth += dx * 0.5; cam.elevation = Math.max(-89, Math.min(89, cam.elevation + dy * 0.5)); }
  requestRender();
});
view3d.addEventListener("pointerup", () => { dragging = false; requestRender(); });
view3d.addEventListener("wheel", (e) => { e.preventDefault(); mask3d.clear(); cam.zoom = Math.max(0.1, Math.min(20, cam.zoom * Math.exp(-e.deltaY * 0.001))); requestRender(); });

for (const button of document.querySelectorAll("button.pen")) {
  button.addEventListener("click", () => {
    document.querySelectorAll("button.pen").forEach((b) => b.classList.remove("on"));
    button.classList.add("on");
    const pen = Number(button.dataset.pen);
    nv.setDrawingEnabled(pen >= 0);
    if (pen >= 0) nv.setPenValue(pen, false);
  });
}
$("undo-stroke").onclick = () => nv.drawUndo();
function sendRefine() {
  send({ type: "refine", steps: Number($("steps").value), lr: Number($("lr").value), keep: Number($("keep").value),
         anchor: $("anchor").checked });
}
// Refine: the slice strokes, then the 3-D mask, then the refinement, each sent when the previous is acknowledged.
$("refine").onclick = () => {
  const strokes = strokesMessage(), mask = mask3d.message();
  if (!strokes && !mask) { progress.textContent = "paint on a slice or draw on the 3-D view first"; return; }
  progress.textContent = "refining…";
  ws.send(strokes || mask);  // the "painted" / "masked" reply sends the next
};
$("undo").onclick = () => send({ type: "undo" });
$("save").onclick = () => send({ type: "save" });
$("overlay").onchange = async (e) => { overlayKind = e.target.value; send({ type: "settings", overlay: overlayKind }); await loadSlices(); requestRender(); };
$("opacity").oninput = (e) => { if (nv.volumes.length > 1) nv.setOpacity(1, Number(e.target.value)); };
$("case").onchange = (e) => send({ type: "open", case: e.target.value });
// For scripts and the browser test: the NiiVue instance, the 3-D camera and strokes.
window.neumoursViewer = { nv, cam, mask3d };
connect();
