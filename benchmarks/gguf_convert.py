"""Run llama.cpp's convert_hf_to_gguf.py on a synthetic GLM-4 checkpoint.

    python benchmarks/gguf_convert.py LLAMA_CPP_DIR CHECKPOINT OUT.gguf

The converter identifies the pre-tokenizer by hashing the tokenizer's output on a fixed text; the
synthetic checkpoints' small BPE is not one it knows, so it is told "glm4" (the split pattern the
synthetic tokenizer copies from GLM-4). Nothing else of the converter changes.
"""

from __future__ import annotations

import sys
from pathlib import Path

PRE_TOKENIZER = "glm4"


def main() -> int:
    llama_dir, source, out = (Path(arg) for arg in sys.argv[1:4])
    sys.path[:0] = [str(llama_dir), str(llama_dir / "gguf-py")]
    import convert_hf_to_gguf
    from conversion import base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: PRE_TOKENIZER
    sys.argv = ["convert_hf_to_gguf.py", str(source), "--outfile", str(out), "--outtype", "f16"]
    convert_hf_to_gguf.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
