// The demo's logic. Files it reads, all from this folder (see README.md):
//   vendor/transformers.min.js + vendor/ort-wasm-simd-threaded.asyncify.{mjs,wasm}   (from npm, setup.sh)
//   models/<task>/   one `adapterdeploy export-standalone` folder (config.json, tokenizer files, onnx/)
//   encode.js        tokenization as the deployment does it (over-long texts keep their final [SEP])
// URL parameters: ?model=<folder under models/> (default: the only one setup.sh wrote, "task") &dtype=q8|fp32
import { AutoModelForSequenceClassification, AutoTokenizer, Tensor, env } from './vendor/transformers.min.js';
import { encodeText, softmax } from './encode.js';

const params = new URLSearchParams(location.search);
const name = params.get('model') || 'task';
const dtype = params.get('dtype') || 'q8';   // q8 -> onnx/model_quantized.onnx, fp32 -> onnx/model.onnx

env.allowRemoteModels = false;                // never the Hugging Face Hub
env.allowLocalModels = true;
// a path, not a full URL: transformers.js only looks for local files at non-URL paths
env.localModelPath = new URL('./models/', location.href).pathname;
env.backends.onnx.wasm.wasmPaths = new URL('./vendor/', location.href).href;  // not the CDN default
env.backends.onnx.wasm.numThreads = 1;        // threads need cross-origin isolation, a plain static server has none

const $ = (id) => document.getElementById(id);
let tokenizer, model;

async function classify(text) {
  const t0 = performance.now();
  const { logits } = await model(encodeText(tokenizer, Tensor, text));
  const probs = softmax(Array.from(logits.data));
  const scores = probs.map((score, i) => ({ label: model.config.id2label[i], score }));
  scores.sort((a, b) => b.score - a.score);
  return { scores, ms: performance.now() - t0 };
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

async function main() {
  try {
    const t0 = performance.now();
    tokenizer = await AutoTokenizer.from_pretrained(name);
    model = await AutoModelForSequenceClassification.from_pretrained(name, { dtype, device: 'wasm' });
    $('status').textContent = `model ${name} (${dtype}) loaded in ${(performance.now() - t0).toFixed(0)} ms`;
    $('status').dataset.ready = '1';
    $('classify').disabled = $('bench').disabled = false;
  } catch (err) {
    $('status').textContent = `could not load models/${name}: ${err}`;
    $('status').dataset.error = String(err);
    return;
  }
  $('classify').onclick = async () => {
    const { scores, ms } = await classify($('text').value);
    const best = scores[0];
    $('result').textContent = `${best.label}  ${(100 * best.score).toFixed(1)}%  (${ms.toFixed(1)} ms)`;
    $('result').dataset.label = best.label;
    $('result').dataset.score = String(best.score);
    $('result').dataset.scores = JSON.stringify(scores);
  };
  $('bench').onclick = async () => {
    const text = $('text').value;
    await classify(text);  // warm-up
    const times = [];
    for (let i = 0; i < 20; i++) times.push((await classify(text)).ms);
    const med = median(times);
    $('latency').textContent = `median of 20 calls: ${med.toFixed(2)} ms (min ${Math.min(...times).toFixed(2)} ms)`;
    $('latency').dataset.median = String(med);
  };
}

main();
