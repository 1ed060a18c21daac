// Tokenize one text as the deployment does, with transformers.js' tokenizer.
// Why not just `tokenizer(text, { truncation: true })`: transformers.js 4.3 truncates an over-long row *after*
// adding the special tokens, cutting off its final [SEP] (</s>), while the deployment (Hugging Face tokenizers,
// longest_first) keeps it; on the tiny test model that moved a probability by 1.1e-4. For one text the
// deployment's row is the first max_length - 1 ids and the last one. (Pairs longer than the limit are not
// handled here: transformers.js cuts them the same way, see README.)
export function encodeText(tokenizer, Tensor, text) {
  const full = tokenizer(text, { truncation: false });
  const n = full.input_ids.dims[1];
  const limit = tokenizer.model_max_length;
  if (n <= limit) return full;
  const cut = (t) => new Tensor(t.type, [...t.data.slice(0, limit - 1), t.data[n - 1]], [1, limit]);
  const out = {};
  for (const [k, v] of Object.entries(full)) out[k] = cut(v);
  return out;
}

export function softmax(logits) {
  const m = Math.max(...logits);
  const e = logits.map((x) => Math.exp(x - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}
