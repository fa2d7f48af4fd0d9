"""Hub publishing: export a TGA-LLaVA as a complete Hub repository, push it, load it back.

```python
>>> from tga_hf.hub import export, push
>>> export(model, processor, "tga-llava", retriever=retriever, report="results/run/report.json", repo_id="me/tga")
>>> push("tga-llava", "me/tga", private=True)
>>> model, processor = tga_hf.from_pretrained("me/tga")
```

A release holds only the trained parts (projector, LoRA adapter, settings, index, card) and rebuilds the base offline:

```python
>>> from tga_hf.hub import save_release, materialize_release
>>> save_release(peft_model, processor, "results/run/release/tga", llm="smollm2-135m", report=report, arm="tga")
>>> model, processor = tga_hf.from_pretrained("results/run/release/tga")
>>> materialize_release("results/run/release/tga", "tga-full")  # the standalone Hub repository
```
"""

from .cards import EvalReport, index_card, model_card, read_report
from .export import export, export_index
from .loading import from_pretrained
from .push import PushResult, push, upload_files
from .release import (
    BaseMismatchError,
    ReleaseVerificationError,
    is_release,
    load_release,
    materialize_release,
    read_release,
    save_release,
    update_release_card,
)

__all__ = [
    "BaseMismatchError",
    "EvalReport",
    "PushResult",
    "ReleaseVerificationError",
    "export",
    "export_index",
    "from_pretrained",
    "index_card",
    "is_release",
    "load_release",
    "materialize_release",
    "model_card",
    "push",
    "read_release",
    "read_report",
    "save_release",
    "update_release_card",
    "upload_files",
]
