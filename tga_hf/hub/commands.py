"""`tga-hf export` (of a saved model or of a release folder), `tga-hf export-index` and `tga-hf push`."""

import argparse
from pathlib import Path
from typing import Any

from .export import DEFAULT_MAX_SHARD_SIZE, export, export_index
from .loading import from_pretrained, load_retriever
from .push import push
from .release import materialize_release


def _repository_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of `export` / `export_index` that `_add_repository_options` defines."""
    return {
        "repo_id": args.repo_id,
        "license": args.license,
        "include_encoder": False if args.encoder_by_name else None,
        "overwrite": args.overwrite,
    }


def _export(args: argparse.Namespace) -> int:
    retriever = load_retriever(args.retriever) if args.retriever else None
    if args.release:
        out_dir = materialize_release(
            args.release,
            args.out,
            retriever=retriever,
            attach_retriever=not args.no_retriever,
            report=args.report,
            base_model=args.base_model or None,
            datasets=args.dataset or None,
            max_shard_size=args.max_shard_size,
            **_repository_settings(args),
        )
        print(f"exported {out_dir} (the full model of the release {args.release})")
        return 0
    model, processor = from_pretrained(args.model, attach_retriever=not args.no_retriever)
    out_dir = export(
        model,
        processor,
        args.out,
        retriever=retriever,
        report=args.report,
        base_model=args.base_model or None,
        datasets=args.dataset or None,
        max_shard_size=args.max_shard_size,
        **_repository_settings(args),
    )
    print(f"exported {out_dir}")
    return 0


def _export_index(args: argparse.Namespace) -> int:
    out_dir = export_index(
        load_retriever(args.retriever), args.out, model_repo_id=args.model_repo_id, **_repository_settings(args)
    )
    print(f"exported {out_dir} (push it with: tga-hf push {out_dir} {args.repo_id} --repo-type dataset)")
    return 0


def _push(args: argparse.Namespace) -> int:
    result = push(
        args.folder,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        repo_type=args.repo_type,
        commit_message=args.commit_message,
        dry_run=args.dry_run,
    )
    if args.dry_run:
        print(f"would upload {len(result.files)} files from {Path(args.folder)} to {args.repo_id}:")
        for path in result.files:
            print(f"  {path}")
    else:
        print(f"pushed {len(result.files)} files to {result.repo_url}: {result.commit_url}")
    return 0


def _add_repository_options(parser: argparse.ArgumentParser, repo_id_required: bool, repo_id_help: str) -> None:
    """The options of the repository folder `export` and `export-index` write: `--out`, its card's `--repo-id` and
    `--license`, `--encoder-by-name` and `--overwrite`."""
    group = parser.add_argument_group("repository")
    group.add_argument("--out", required=True, help="folder to create: the repository")
    group.add_argument("--repo-id", required=repo_id_required, help=repo_id_help)
    group.add_argument("--license", help="licence identifier for the card, e.g. apache-2.0")
    group.add_argument(
        "--encoder-by-name",
        action="store_true",
        help="record the retriever's encoder by name instead of copying it into the repository (smaller)",
    )
    group.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write a saved TGA-LLaVA, or the full model of a release folder, as a complete Hub repository"
    )
    # A TGA-LLaVA loaded by `from_pretrained` (the package's classes, never remote code): not `cli.add_model_options`.
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="folder (or Hub id) of a saved TGA-LLaVA and its processor")
    source.add_argument(
        "--release",
        help="release folder (tga_hf.hub.save_release): the base is rebuilt offline and verified, the trained parts "
        "applied (the adapter merged); its report, base model and licence are the defaults of the card",
    )
    parser.add_argument("--retriever", help="retrieval index folder (default: the model folder's retrieval/)")
    parser.add_argument("--no-retriever", action="store_true", help="export without a retrieval index")
    parser.add_argument(
        "--report",
        help="evaluation report JSON (tga-hf eval / experiment) for the model card (with --release: the release's)",
    )
    parser.add_argument("--base-model", action="append", help="Hub id of a base model (repeatable)")
    parser.add_argument("--dataset", action="append", help="Hub id of an alignment dataset (repeatable)")
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="shard weights above this size")
    _add_repository_options(parser, False, "Hub id the card's usage code loads (default: the folder name)")
    parser.set_defaults(func=_export)

    parser = subparsers.add_parser("export-index", help="write a retrieval index as its own Hub dataset repository")
    parser.add_argument("--retriever", required=True, help="folder of a saved retriever (tga-hf index build)")
    parser.add_argument("--model-repo-id", help="Hub id of the model that uses the index (linked from the card)")
    _add_repository_options(parser, True, "Hub id of the dataset repository (for its card)")
    parser.set_defaults(func=_export_index)

    parser = subparsers.add_parser("push", help="upload an exported folder to the Hugging Face Hub")
    parser.add_argument("folder", help="folder written by tga-hf export")
    parser.add_argument("repo_id", help="namespace/name on the Hub")
    parser.add_argument("--private", action="store_true", default=None, help="create the repository as private")
    parser.add_argument("--revision", help="branch to push to (created when missing)")
    parser.add_argument("--repo-type", default="model", choices=["model", "dataset"])
    parser.add_argument("--commit-message")
    parser.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded, send nothing")
    parser.set_defaults(func=_push)
