"""``ddpmkit data prepare | info``: build the prepared on-disk copy of a config's data set ahead of
training, and show what a data set holds and where it lives."""

from __future__ import annotations

import json
from pathlib import Path

from ..argtypes import positive_int
from ..errors import UserError


def _data_config(args):
    from ..config import load_config

    return load_config(args.config, args.set).data


def _cache_root(d) -> Path:
    from .prepared import default_cache_root

    return Path(d.prepared_dir) if d.prepared_dir else default_cache_root()


def cmd_prepare(args) -> int:
    from . import prepared as P

    d = _data_config(args)
    try:
        if P.resolve_storage(d.name, d.storage) != "prepared":
            raise UserError(f"{d.name!r} is held in memory (data.storage = {d.storage!r}); nothing to prepare. "
                            "Prepared copies are built from image folders (data.name = 'image-folder')")
        src = P.folder_source(d.data_dir, d.image_size, d.channels)
        report = P.prepare(src, cache_root=_cache_root(d), workers=args.workers or P.default_workers(d.workers),
                           progress=not args.no_progress, force=args.force)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(P.report_line(report, src) + f" [{report.seconds:.1f} s]")
    return 0


def _print_info(info: dict) -> None:
    classes = info.get("classes")
    rows = [("data", f"{info['name']} from {info['root']}"),
            ("images", f"{info['count']:,} at {info['shape'][1]}x{info['shape'][2]}, {info['shape'][0]} channel(s)"),
            ("classes", f"{len(classes)} ({', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})"
             if classes else "none (unlabelled)"),
            ("skipped", f"{info['skipped']} unreadable of {info['source_files']:,} files"),
            ("upscaled", f"{info['upscaled']} smaller than {info['image_size']}x{info['image_size']} (bicubic)"),
            ("size", f"{info['disk_bytes'] / 2**20:,.1f} MiB on disk"),
            ("where", info["path"]),
            ("status", "up to date with its source" if info["fresh"]
             else "STALE: the source changed (rebuilt by the next `data prepare` or `train`)")]
    for k, v in rows:
        print(f"{k:<9} {v}")


def cmd_info(args) -> int:
    from . import prepared as P

    try:
        if args.path:
            info = P.prepared_info(args.path)
        elif args.config:
            d = _data_config(args)
            if P.resolve_storage(d.name, d.storage) == "memory":
                from .registry import load_dataset

                ds = load_dataset(d.name, data_dir=d.data_dir or None, image_size=d.image_size or None,
                                  channels=d.channels or None, n=d.n or None)
                info = {"name": ds.name, "split": ds.split, "kind": ds.kind, "size": len(ds),
                        "shape": list(ds.shape), "classes": list(ds.class_names or []), "source": ds.source,
                        "storage": "memory"}
                print(json.dumps(info, indent=2) if args.json else
                      "\n".join(f"{k:<12} {v}" for k, v in info.items()))
                return 0
            src = P.folder_source(d.data_dir, d.image_size, d.channels)
            path = _cache_root(d) / src.key()
            if P.read_manifest(path) is None:
                raise UserError(f"{src.root} has no prepared copy at {src.image_size}x{src.image_size} yet "
                                f"(looked in {path}); build it with `ddpmkit data prepare --config {args.config}`")
            info = P.prepared_info(path)
        else:
            root = P.default_cache_root()
            copies = sorted(p for p in root.iterdir() if P.read_manifest(p) is not None) if root.is_dir() else []
            if args.json:
                print(json.dumps([P.prepared_info(p) for p in copies], indent=2))
            for p in copies if not args.json else []:
                m = P.read_manifest(p)
                print(f"{p}  {m['count']:,} images {m['shape']}  from {m['root']}")
            if not copies and not args.json:
                print(f"no prepared copies in {root}")
            return 0
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_info(info)
    return 0


DESCRIPTION = ("`data prepare --config C` decodes an image folder once (in parallel worker processes) into a "
               "memory-mapped copy that training reads by index; `data info` shows its size, count, classes "
               "and where it lives.")


def add_data_parser(sub) -> None:
    """Register ``ddpmkit data`` on the top-level subparsers."""
    dsub = sub.add_parser("data", help="prepare an image folder for training; describe a data set",
                          description=DESCRIPTION).add_subparsers(dest="data_command", metavar="WHAT", required=True)

    def config_args(q, required: bool):
        q.add_argument("--config", required=required, help="TOML config whose [data] section names the set")
        q.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config value, e.g. --set data.image_size=64; repeatable")

    pr = dsub.add_parser("prepare", help="build (or reuse) the prepared copy of a config's image folder",
                         description="Decode every PNG/JPEG under data.data_dir, resized and centre-cropped to "
                                     "data.image_size, into data.prepared_dir. Reused while the files are "
                                     "unchanged; rebuilt (with a message) when they change.")
    config_args(pr, True)
    pr.add_argument("--workers", type=positive_int, default=None,
                    help="decoding processes (default: data.workers, 0 there meaning one per CPU core)")
    pr.add_argument("--force", action="store_true", help="rebuild even if the prepared copy is up to date")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    pr.set_defaults(func=cmd_prepare)

    info = dsub.add_parser("info", help="size, count, classes and location of a data set",
                           description="With --config: the config's data set (its prepared copy for image "
                                       "folders). With --path: one prepared copy. With neither: list the "
                                       "prepared copies in the default cache directory.")
    config_args(info, False)
    info.add_argument("--path", default=None, help="a prepared-copy directory")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_info)
