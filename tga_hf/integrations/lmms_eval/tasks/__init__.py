"""lmms-eval tasks shipped with tga-hf (pass this folder to `lmms-eval --include_path`). lmms-eval also looks this
package up when `LMMS_EVAL_PLUGINS` names the plugin, so it must stay importable."""
