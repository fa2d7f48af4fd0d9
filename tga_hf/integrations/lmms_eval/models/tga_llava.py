"""lmms-eval model `tga_llava`: any TGA-LLaVA folder, retrieval on or off, batched generation."""

from __future__ import annotations

from typing import Any

from lmms_eval import utils
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from ..runner import TGALlavaRunner


class TGALlava(lmms):
    """A TGA-LLaVA model for lmms-eval (`--model tga_llava`).

    Model arguments (`--model_args key=value,...`):
        pretrained: the model folder (`tga-hf export` / `save_pretrained` output) or a Hub id.
        retrieval: on | off | auto (default auto: on when the folder ships `retrieval/`).
        retriever: another retrieval index folder to use.
        device: cpu, cuda, cuda:N (default: cuda when available).
        dtype: auto | float32 | bfloat16 | float16 (default float32).
        batch_size: samples per `generate` call (also `--batch_size`).

    Example:
        LMMS_EVAL_PLUGINS=tga_hf.integrations.lmms_eval lmms-eval --model tga_llava \\
            --model_args pretrained=tga-llava,retrieval=on --tasks tga_figstep_safety \\
            --include_path "$(python -c 'import tga_hf.integrations.lmms_eval as p; print(p.TASKS_DIR)')"
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        retrieval: str | bool = "auto",
        retriever: str | None = None,
        device: str | None = None,
        dtype: str = "float32",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise TypeError(f"tga_llava: unknown model_args {sorted(kwargs)}; see TGALlava's docstring")
        if str(batch_size).startswith("auto"):
            raise ValueError("tga_llava: batch_size=auto is not supported; give a number")
        from accelerate import Accelerator

        # Each process would run every request: data parallelism needs request sharding this class does not do.
        if Accelerator().num_processes > 1:
            raise NotImplementedError(
                "tga_llava runs in a single process; launch lmms-eval without accelerate/torchrun"
            )
        self.runner = TGALlavaRunner.from_pretrained(pretrained, retrieval, retriever, device, dtype)
        self.batch_size_per_gpu = int(batch_size)
        self.chat_template = None  # the prompt is built with the model's own chat template (see TGALlavaRunner)

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> Any:
        return self.runner.device

    @property
    def model(self) -> Any:
        return self.runner.model

    @property
    def tokenizer(self) -> Any:
        return self.runner.tokenizer

    def _visuals(self, doc_to_visual: Any, doc_id: int, task: str, split: str) -> list[Any]:
        if doc_to_visual is None:
            return []
        return list(doc_to_visual(self.task_dict[task][split][doc_id]) or [])

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Responses to `(context, generation_kwargs, doc_to_visual, doc_id, task, split)` requests, in order; batches
        share their generation kwargs and are sorted longest context first."""
        collator = utils.Collator(
            [request.args for request in requests],
            lambda args: (-len(self.tokenizer(args[0])["input_ids"]), args[0]),
            grouping=True,
        )
        responses = []
        for chunk in collator.get_batched(n=self.batch_size, batch_fn=None):
            contexts, all_kwargs, doc_to_visual, doc_ids, tasks, splits = zip(*chunk, strict=True)
            kwargs = dict(all_kwargs[0])
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            outputs = self.runner.generate(
                list(contexts),
                [self._visuals(*args) for args in zip(doc_to_visual, doc_ids, tasks, splits, strict=True)],
                max_new_tokens=int(kwargs.get("max_new_tokens", 128)),
                until=until,
                temperature=float(kwargs.get("temperature", 0) or 0),
                top_p=kwargs.get("top_p"),
                num_beams=int(kwargs.get("num_beams", 1) or 1),
                batch_size=self.batch_size,
            )
            for context, output in zip(contexts, outputs, strict=True):
                self.cache_hook.add_partial("generate_until", (context, all_kwargs[0]), output)
            responses.extend(outputs)
        return collator.get_original(responses)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(log P(continuation | context, images), is greedy) per `(context, continuation, doc_to_visual, doc_id,
        task, split)` request; a continuation given as a function is applied to the document."""
        results = []
        for request in requests:
            if len(request.args) == 2:
                # multiple_choice with acc_mutual_info also asks for the unconditional (context-free, image-free) score
                context, continuation = request.args
                visuals = []
            else:
                context, continuation, doc_to_visual, doc_id, task, split = request.args
                if callable(continuation):
                    continuation = continuation(self.task_dict[task][split][doc_id])
                visuals = self._visuals(doc_to_visual, doc_id, task, split)
            results.append(self.runner.loglikelihood(context, continuation, visuals))
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "tga_llava does not run multi-round tasks: TGA retrieves one text per image for a single user turn"
        )
