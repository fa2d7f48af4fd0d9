"""Hub publishing: export a TGA-LLaVA as a complete Hub repository, push it, load it back.

```python
>>> from tga_hf.hub import export, push
>>> export(model, processor, "tga-llava", retriever=retriever, report="results/run/report.json", repo_id="me/tga")
>>> push("tga-llava", "me/tga", private=True)
>>> model, processor = tga_hf.from_pretrained("me/tga")
```
"""

from .cards import EvalReport, index_card, model_card, read_report
from .export import export, export_index
from .loading import from_pretrained
from .push import PushResult, push, upload_files

__all__ = [
    "EvalReport",
    "PushResult",
    "export",
    "export_index",
    "from_pretrained",
    "index_card",
    "model_card",
    "push",
    "read_report",
    "upload_files",
]
