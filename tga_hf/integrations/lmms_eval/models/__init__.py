"""lmms-eval's plugin model table: `LMMS_EVAL_PLUGINS=tga_hf.integrations.lmms_eval` makes lmms-eval import this
module and register each entry as `tga_hf.integrations.lmms_eval.models.<name>.<class>`."""

AVAILABLE_MODELS = {"tga_llava": "TGALlava"}
