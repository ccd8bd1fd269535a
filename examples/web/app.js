// segjax in the browser: the exported ONNX model (probabilities at the training size, with
// normalisation and TTA inside) run by onnxruntime-web, then what segjax does after it:
// bilinear resize of the probabilities to the image's size, the tuned threshold and the
// tuned post-processing (opening, small components, holes). Page parameters: ?model=URL
// (default model.onnx, with URL.json beside it) and ?image=URL (process it on load).
"use strict";

const params = new URLSearchParams(location.search);
const modelUrl = params.get("model") || "model.onnx";
const statusLine = document.getElementById("status");
const view = document.getElementById("view");
let session = null;
let record = null;

function say(text) {
  statusLine.textContent = text;
}

async function load() {
  ort.env.wasm.wasmPaths = new URL("vendor/", location.href).href; // a URL import() resolves
  ort.env.wasm.numThreads = 1; // no cross-origin isolation needed
  record = await (await fetch(modelUrl + ".json")).json();
  session = await ort.InferenceSession.create(modelUrl, { executionProviders: ["wasm"] });
  const [h, w] = record.image_size;
  say(`model ready: ${w}x${h} input, threshold ${record.postprocess.threshold}`);
}

// Pillow's resampling, as segjax resizes (Image.resize with BILINEAR): a triangle filter whose
// support grows with the reduction (antialiased), one pass along x, then one along y. `bytes`:
// 8-bit channels with Pillow's fixed-point weights and rounding after each pass; otherwise
// float32 (mode "F", the probabilities).
const PRECISION_BITS = 22;

function weights(inSize, outSize, bytes) {
  const scale = inSize / outSize, filterscale = Math.max(scale, 1), support = filterscale;
  const table = [];
  for (let o = 0; o < outSize; o++) {
    const center = (o + 0.5) * scale;
    const lo = Math.max(Math.trunc(center - support + 0.5), 0);
    const hi = Math.min(Math.trunc(center + support + 0.5), inSize);
    let k = [], total = 0;
    for (let i = lo; i < hi; i++) {
      const w = Math.max(1 - Math.abs((i - center + 0.5) / filterscale), 0);
      k.push(w);
      total += w;
    }
    if (total !== 0) k = k.map((w) => w / total);
    if (bytes) k = k.map((w) => Math.trunc(w * (1 << PRECISION_BITS) + (w < 0 ? -0.5 : 0.5)));
    table.push({ lo, k });
  }
  return table;
}

// [h, w, c] (row-major, channels last) -> [H, W, c]
function resample(src, h, w, c, H, W, bytes) {
  const pass = (input, rows, inLen, outLen, along) => {
    // along x: input [rows, inLen, c] -> [rows, outLen, c]; along y: [inLen, rows, c] -> [outLen, rows, c]
    const table = weights(inLen, outLen, bytes);
    const out = bytes ? new Uint8Array(rows * outLen * c) : new Float32Array(rows * outLen * c);
    for (let r = 0; r < rows; r++) {
      for (let o = 0; o < outLen; o++) {
        const { lo, k } = table[o];
        for (let ch = 0; ch < c; ch++) {
          let sum = bytes ? 1 << (PRECISION_BITS - 1) : 0;
          for (let j = 0; j < k.length; j++) {
            const at = along === "x" ? (r * inLen + lo + j) * c + ch : ((lo + j) * rows + r) * c + ch;
            sum += input[at] * k[j];
          }
          const to = along === "x" ? (r * outLen + o) * c + ch : (o * rows + r) * c + ch;
          out[to] = bytes ? Math.min(Math.max(Math.floor(sum / (1 << PRECISION_BITS)), 0), 255) : sum;
        }
      }
    }
    return out;
  };
  const across = W === w ? src : pass(src, h, w, W, "x");
  return H === h ? across : pass(across, W, h, H, "y");
}

// The image at the model's size as uint8 [1, h, w, C] (NHWC, RGB or L): its pixels read at
// their own size, converted and resized as segjax decodes them (Pillow's rules).
function inputTensor(source, H, W) {
  const [h, w] = record.image_size;
  const canvas = document.createElement("canvas");
  canvas.width = W;
  canvas.height = H;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(source, 0, 0, W, H);
  const rgba = ctx.getImageData(0, 0, W, H).data;
  const c = record.channels;
  const pixels = new Uint8Array(H * W * c);
  for (let i = 0; i < H * W; i++) {
    if (c === 1) { // Pillow's RGB -> L: ITU-R 601-2 luma in 16-bit fixed point
      pixels[i] = (rgba[4 * i] * 19595 + rgba[4 * i + 1] * 38470 + rgba[4 * i + 2] * 7471 + 0x8000) >> 16;
    } else {
      pixels[3 * i] = rgba[4 * i];
      pixels[3 * i + 1] = rgba[4 * i + 1];
      pixels[3 * i + 2] = rgba[4 * i + 2];
    }
  }
  return new ort.Tensor("uint8", resample(pixels, H, W, c, h, w, true), [1, h, w, c]);
}

// Binary erosion (all) or dilation (any) by a disk of `radius`, outside the image background:
// each disk row is a span, checked with the row's prefix sums.
function morph(mask, H, W, radius, erode) {
  const sums = new Int32Array(H * (W + 1));
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) sums[y * (W + 1) + x + 1] = sums[y * (W + 1) + x] + mask[y * W + x];
  }
  const half = [];
  for (let dy = -radius; dy <= radius; dy++) half.push(Math.floor(Math.sqrt(radius * radius - dy * dy)));
  const out = new Uint8Array(H * W);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      let hit = erode ? 1 : 0;
      for (let k = 0; k < half.length; k++) {
        const yy = y + k - radius, a = half[k];
        if (yy < 0 || yy >= H) {
          if (erode) { hit = 0; break; }
          continue;
        }
        const lo = x - a, hi = x + a;
        const l = Math.max(lo, 0), r = Math.min(hi, W - 1);
        const ones = sums[yy * (W + 1) + r + 1] - sums[yy * (W + 1) + l];
        if (erode && (lo < 0 || hi >= W || ones < hi - lo + 1)) { hit = 0; break; }
        if (!erode && ones > 0) { hit = 1; break; }
      }
      out[y * W + x] = hit;
    }
  }
  return out;
}

// 4-connected components of the pixels equal to `value`: labels and sizes.
function components(mask, H, W, value) {
  const labels = new Int32Array(H * W).fill(-1);
  const sizes = [];
  const stack = new Int32Array(H * W);
  for (let start = 0; start < H * W; start++) {
    if (mask[start] !== value || labels[start] >= 0) continue;
    const id = sizes.length;
    let top = 0, size = 0;
    stack[top++] = start;
    labels[start] = id;
    while (top > 0) {
      const i = stack[--top];
      size++;
      const y = Math.floor(i / W), x = i % W;
      for (const j of [y > 0 ? i - W : -1, y < H - 1 ? i + W : -1, x > 0 ? i - 1 : -1, x < W - 1 ? i + 1 : -1]) {
        if (j >= 0 && mask[j] === value && labels[j] < 0) {
          labels[j] = id;
          stack[top++] = j;
        }
      }
    }
    sizes.push(size);
  }
  return { labels, sizes };
}

// segjax's post-processing (segjax/inference/postprocess.py), on a 0/1 mask.
function postprocess(mask, H, W, p) {
  const radius = Math.round(p.open_radius * Math.min(H, W));
  if (radius > 0) mask = morph(morph(mask, H, W, radius, true), H, W, radius, false);
  if (p.min_area > 0 || p.min_relative > 0) {
    const { labels, sizes } = components(mask, H, W, 1);
    if (sizes.length) {
      const least = Math.max(p.min_area * H * W, p.min_relative * Math.max(...sizes));
      for (let i = 0; i < H * W; i++) if (mask[i] && sizes[labels[i]] < least) mask[i] = 0;
    }
  }
  if (p.fill_holes) {
    const { labels, sizes } = components(mask, H, W, 0);
    const outside = new Set();
    for (let x = 0; x < W; x++) { outside.add(labels[x]); outside.add(labels[(H - 1) * W + x]); }
    for (let y = 0; y < H; y++) { outside.add(labels[y * W]); outside.add(labels[y * W + W - 1]); }
    for (let i = 0; i < H * W; i++) if (!mask[i] && !outside.has(labels[i])) mask[i] = 1;
    void sizes;
  }
  return mask;
}

function show(source, mask, H, W) {
  view.width = W;
  view.height = H;
  const ctx = view.getContext("2d");
  ctx.drawImage(source, 0, 0, W, H);
  const pixels = ctx.getImageData(0, 0, W, H);
  for (let i = 0; i < H * W; i++) {
    if (mask[i]) { // the person tinted red, as segjax's previews draw a prediction
      pixels.data[4 * i] = Math.round(0.5 * pixels.data[4 * i] + 127);
      pixels.data[4 * i + 1] = Math.round(0.5 * pixels.data[4 * i + 1]);
      pixels.data[4 * i + 2] = Math.round(0.5 * pixels.data[4 * i + 2]);
    }
  }
  ctx.putImageData(pixels, 0, 0);
}

// The mask for a reader of the page (its tests): H, W and the bits row by row, base64.
function publish(mask, H, W) {
  const bytes = new Uint8Array(Math.ceil(H * W / 8));
  for (let i = 0; i < H * W; i++) if (mask[i]) bytes[i >> 3] |= 128 >> (i & 7);
  let text = "";
  for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode(...bytes.subarray(i, i + 8192));
  document.getElementById("mask").textContent = `${H} ${W} ${btoa(text)}`;
  document.body.dataset.state = "done";
}

async function segment(source, H, W) {
  const started = performance.now();
  say("segmenting ...");
  const output = await session.run({ images: inputTensor(source, H, W) });
  const [h, w] = record.image_size;
  const prob = resample(output.probabilities.data, h, w, 1, H, W, false);
  let mask = new Uint8Array(H * W);
  for (let i = 0; i < H * W; i++) mask[i] = prob[i] >= record.postprocess.threshold ? 1 : 0;
  mask = postprocess(mask, H, W, record.postprocess);
  show(source, mask, H, W);
  publish(mask, H, W);
  const share = mask.reduce((a, b) => a + b, 0) / (H * W);
  say(`${W}x${H}: ${(100 * share).toFixed(1)}% person, ${Math.round(performance.now() - started)} ms`);
}

function fromUrl(url) {
  const image = new Image();
  image.onload = () => segment(image, image.naturalHeight, image.naturalWidth);
  image.onerror = () => say(`cannot read ${url}`);
  image.src = url;
}

document.getElementById("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) fromUrl(URL.createObjectURL(file));
});

const video = document.getElementById("video");
document.getElementById("camera").addEventListener("click", async () => {
  try {
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: true });
    video.style.display = "block";
    document.getElementById("snap").disabled = false;
  } catch (err) {
    say(`no webcam here (${err.name})`);
  }
});
document.getElementById("snap").addEventListener("click", () => {
  segment(video, video.videoHeight, video.videoWidth);
});

load().then(() => {
  if (params.get("image")) fromUrl(params.get("image"));
}).catch((err) => say(`cannot load ${modelUrl}: ${err}`));
