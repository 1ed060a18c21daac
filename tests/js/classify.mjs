// Load a standalone model folder with transformers.js (Node, onnxruntime-node) as a user would: local files
// only, no network. Prints {"logits": [[...], ...], "pipeline": [...]} as JSON.
//   node classify.mjs MODEL_DIR DTYPE INPUTS_JSON      (inputs: ["text", ["text_a", "text_b"], ...])
// Single texts go through examples/browser/encode.js (copied beside this script), the demo's tokenization.
import { AutoModelForSequenceClassification, AutoTokenizer, Tensor, env, pipeline } from '@huggingface/transformers';
import path from 'node:path';
import { encodeText } from './encode.js';

const [modelDir, dtype, inputsJson] = process.argv.slice(2);
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = path.dirname(path.resolve(modelDir)) + '/';
const name = path.basename(path.resolve(modelDir));
const inputs = JSON.parse(inputsJson);

const tokenizer = await AutoTokenizer.from_pretrained(name);
const model = await AutoModelForSequenceClassification.from_pretrained(name, { dtype, device: 'cpu' });
const logitsOut = [];
for (const item of inputs) {
  const enc = Array.isArray(item)
    ? tokenizer(item[0], { text_pair: item[1], truncation: true })
    : encodeText(tokenizer, Tensor, item);
  const { logits } = await model(enc);
  logitsOut.push(Array.from(logits.data));
}
// the high-level pipeline, on the single texts within the limit (it takes no pairs and cuts long rows as above)
const classify = await pipeline('text-classification', name, { dtype, device: 'cpu' });
const viaPipeline = [];
for (const text of inputs) {
  const short = !Array.isArray(text) && tokenizer(text).input_ids.dims[1] <= tokenizer.model_max_length;
  viaPipeline.push(short ? await classify(text, { top_k: null }) : null);
}
console.log(JSON.stringify({ logits: logitsOut, pipeline: viaPipeline }));
