"""The ``floranet`` command: parse, call one library function, print."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _quiet_tensorflow_import() -> None:
    """Imports TensorFlow with its C++ start-up banner (absl lines on fd 2) silenced."""
    if "tensorflow" in sys.modules or os.environ.get("FLORANET_VERBOSE_TF"):
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _int_or_pair(text: str) -> int | tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or HxW, got {text!r}") from None
    return values[0] if len(values) == 1 else (values[0], values[1])


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training settings (override --config and the preset)")
    g.add_argument("--config", help="YAML file of settings")
    g.add_argument("--preset", choices=["tutorial", "recommended"])
    g.add_argument("--backbone", help="resnet50 (default), resnet18, mobilenet_v2, ... (see `floranet backbones`)")
    g.add_argument("--weights", help="imagenet | none | PATH to a weights file")
    g.add_argument("--image-size", type=_int_or_pair, help="pixels, e.g. 180 or 180x240")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--epochs", type=int, help="stage 1 epochs (frozen backbone)")
    g.add_argument("--fine-tune-epochs", type=int, help="stage 2 epochs (top of the backbone unfrozen)")
    g.add_argument("--learning-rate", type=float)
    g.add_argument("--fine-tune-learning-rate", type=float)
    g.add_argument("--schedule", choices=["cosine", "plateau", "constant"])
    g.add_argument("--val-split", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--precision", choices=["fp32", "bf16", "auto"],
                   help="auto: bf16 feature extraction and mixed-bf16 fine-tuning where the CPU computes bf16 "
                        "natively, fp32 elsewhere; bf16: every stage in mixed bf16")
    g.add_argument("--runtime", choices=["auto", "tensorflow", "openvino"],
                   help="runtime of frozen-feature extraction (auto: the fastest installed)")
    g.add_argument("--augment", nargs="?", const="all", choices=["off", "fine-tune", "all"],
                   help="bare --augment: every stage (stage 1 then runs the full model)")
    g.add_argument("--class-weights", choices=["auto"])
    g.add_argument("--dropout", type=float)
    g.add_argument("--head-units", type=int)
    g.add_argument("--split-file", help="reuse this split.csv instead of making a new split")
    g.add_argument("--distribute", choices=["none", "auto", "mirrored", "multi-worker"],
                   help="data-parallel training; --batch-size is then per replica and the learning rates "
                        "are scaled by the number of replicas")
    g.add_argument("--workers", help="multi-worker cluster as host:port,host:port (else TF_CONFIG is used)")
    g.add_argument("--worker-index", type=int, help="this process's index in --workers (0 is the chief)")


def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runtime", choices=["auto", "tensorflow", "openvino"], default="auto",
                   help="inference runtime (auto: OpenVINO on CPU for 256+ images or a server, else TensorFlow)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="inference precision (auto: bf16 where the CPU has it natively and it is safe)")


TRAIN_KEYS = ("preset", "backbone", "weights", "image_size", "batch_size", "epochs", "fine_tune_epochs",
              "learning_rate", "fine_tune_learning_rate", "schedule", "val_split", "seed", "precision", "runtime",
              "augment", "class_weights", "dropout", "head_units", "split_file", "distribute", "workers",
              "worker_index")


def build_parser() -> argparse.ArgumentParser:
    from floranet import __version__

    parser = argparse.ArgumentParser(prog="floranet", description="Train and use ResNet image classifiers.")
    parser.add_argument("--version", action="version", version=f"floranet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="the Keras flower tutorial end to end (works offline)")
    p.add_argument("--data", help="folder-per-class image set (default: flower_photos, else the bundled sample)")
    p.add_argument("--out", help="run directory (default: runs/demo-<time>)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--image-size", type=int)

    p = sub.add_parser("train", help="train a classifier on DATA_DIR")
    p.add_argument("data_dir")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    _add_train_flags(p)

    p = sub.add_parser("doctor", help="check a folder-per-class image set")
    p.add_argument("data_dir")
    p.add_argument("--json", help="also write the full report as JSON")
    p.add_argument("--max-pixels", type=int, default=50_000_000)
    p.add_argument("--workers", type=int, help="decoding threads (default: up to 8)")

    p = sub.add_parser("fetch", help="download a dataset into the cache (mini_flowers is bundled)")
    p.add_argument("name", nargs="?", default="flower_photos", help="flower_photos or mini_flowers")
    p.add_argument("--cache-dir", help="default: $KERAS_HOME/datasets or ~/.keras/datasets")
    p.add_argument("--url", help="mirror URL of the archive (or set FLORANET_DATASETS_URL to a base URL)")
    p.add_argument("--timeout", type=float, default=10.0)

    p = sub.add_parser("evaluate", help="metrics, calibration and plots on held-out data")
    p.add_argument("run_dir")
    p.add_argument("--data", help="another labelled folder-per-class set (default: the run's validation split)")
    p.add_argument("--batch-size", type=int, default=32)
    _add_runtime(p)

    p = sub.add_parser("predict", help="classify images, folders or globs")
    p.add_argument("run_dir")
    p.add_argument("paths", nargs="+")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"],
                   help="default: from the --output suffix (.csv, .json, .parquet), else table")
    p.add_argument("--output", help="write to this file instead of standard output")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--low-confidence", type=float, default=0.5, help="flag rows whose top probability is below")
    p.add_argument("--calibrated", action="store_true", help="report temperature-scaled probabilities")
    p.add_argument("--unsafe", action="store_true", help="allow loading a model that contains code")
    _add_runtime(p)
    p.add_argument("--engine", default="local", help="local (this process) or ray (Ray Data; floranet[ray])")
    p.add_argument("--ray-address", help="Ray cluster host:port (default: RAY_ADDRESS, else a local Ray instance)")
    p.add_argument("--workers", type=int, help="Ray actors, each loading the model once (default: one per CPU)")

    p = sub.add_parser("explain", help="Grad-CAM overlays: where the model looked")
    p.add_argument("run_dir")
    p.add_argument("paths", nargs="+")
    p.add_argument("--out", default=".", help="folder for <image>.gradcam.png files")
    p.add_argument("--class", dest="class_name", help="explain this class (default: the predicted one)")

    p = sub.add_parser("report", help="write RUN_DIR/report.html (self-contained)")
    p.add_argument("run_dir")
    p.add_argument("--out", help="write the HTML here instead")

    p = sub.add_parser("export", help="export RUN_DIR's model and check it against model.keras")
    p.add_argument("run_dir")
    p.add_argument("--format", required=True, choices=["keras", "saved_model", "onnx", "openvino", "tflite"])
    p.add_argument("--quantize", choices=["fp16", "int8"],
                   help="tflite and openvino only; int8 calibrates on up to 200 training images")
    p.add_argument("--out", help="export folder (default: RUN_DIR/exports/<format>[-<quantize>])")
    p.add_argument("--max-images", type=int, default=200,
                   help="validation images for the agreement check (0: skip it)")

    p = sub.add_parser("serve", help="REST API + web page for a run (http://127.0.0.1:8000/)")
    p.add_argument("run_dir")
    p.add_argument("--host", default="127.0.0.1", help="anything but loopback is reachable from the network")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--unsafe", action="store_true", help="allow loading a model that contains code")
    p.add_argument("--max-batch", type=int, default=32, help="most images per model call")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more images")
    _add_runtime(p)

    sub.add_parser("backbones", help="list backbone names")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from floranet.errors import FloranetError

    try:
        _quiet_tensorflow_import()
        return COMMANDS[args.command](args)
    except FloranetError as e:
        print(f"floranet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def cmd_demo(args: argparse.Namespace) -> int:
    from floranet.demo import run_demo

    run_demo(args.data, args.out, epochs=args.epochs, image_size=args.image_size)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from floranet import config
    from floranet.workflow import train_and_report

    flags = {k: getattr(args, k) for k in TRAIN_KEYS}
    cfg = config.resolve(file=args.config, data_dir=args.data_dir, out=args.out, **flags)
    result = train_and_report(cfg, resume=args.resume)
    acc = result.metrics.get("accuracy")
    print(f"Done in {result.timings['total']:.0f} s."
          + (f" Validation accuracy {acc:.1%}." if acc is not None else ""))
    print(f"Run directory: {result.run_dir}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from floranet.data import doctor

    report = doctor.diagnose(args.data_dir, max_pixels=args.max_pixels, workers=args.workers,
                             progress=sys.stderr.isatty())
    print(report.format_text())
    if args.json:
        report.write_json(args.json)
        print(f"JSON report: {args.json}")
    if not report.usable:
        print(f"not usable: {report.reason}", file=sys.stderr)
        return 1
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from floranet.data import datasets

    print(datasets.fetch(args.name, cache_dir=args.cache_dir, url=args.url, timeout=args.timeout,
                         progress=sys.stderr.isatty()))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from floranet.evaluate import evaluate_run

    ev = evaluate_run(args.run_dir, data_dir=args.data, batch_size=args.batch_size, runtime=args.runtime,
                      precision=args.precision)
    name = "metrics.json" if args.data is None else "metrics_external.json"
    m = ev.write(args.run_dir, name=name)
    print(f"{ev.source}: {m['num_examples']} images, accuracy {m.get('accuracy', 0):.1%}, "
          f"loss {m.get('loss', 0):.3f}, ECE {m['calibration']['ece']:.3f} "
          f"(after temperature {ev.temperature:.2f}: {m['calibration']['ece_after_temperature']:.3f})")
    for t, p_, c in ev.most_confused()[:5]:
        print(f"  {t} predicted as {p_}: {c}")
    print(f"Ran on {ev.extra['evaluated_on']}. Wrote {args.run_dir}/{name} and plots/")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from floranet import predict, predict_ray
    from floranet.errors import ConfigError

    predict_ray.check_engine(args.engine, address=args.ray_address, num_workers=args.workers)
    if args.format == "parquet" and not args.output:
        raise ConfigError("format='parquet' needs --output FILE.parquet. Received: output=None")
    load_kwargs = dict(batch_size=args.batch_size, low_confidence=args.low_confidence, calibrated=args.calibrated,
                       safe_mode=not args.unsafe, runtime=args.runtime, precision=args.precision)
    if args.engine == "ray":  # stderr: stdout stays clean CSV/JSON
        rows = predict_ray.predict_with_ray(args.run_dir, args.paths, top_k=args.top_k, address=args.ray_address,
                                            num_workers=args.workers, say=lambda m: print(m, file=sys.stderr),
                                            **load_kwargs)
    else:
        predictor = predict.load(args.run_dir, **load_kwargs)
        rows = predictor.predict(args.paths, top_k=args.top_k)
        if predictor.choice is not None:
            print(f"Ran on {predictor.choice.runtime} {predictor.choice.precision}: {predictor.choice.reason}.",
                  file=sys.stderr)
    if args.output:
        predict.write_predictions(rows, args.format, args.output)
        print(f"{len(rows)} predictions written to {args.output}")
    else:
        sys.stdout.write(predict.format_predictions(rows, args.format or "table"))
    return 1 if rows and all(r.error for r in rows) else 0


def cmd_explain(args: argparse.Namespace) -> int:
    from floranet.gradcam import explain_files

    for path in explain_files(args.run_dir, args.paths, args.out, class_name=args.class_name):
        print(path)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from floranet.report import build_report

    print(build_report(args.run_dir, out=args.out))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from floranet.export import export_run

    result = export_run(args.run_dir, args.format, quantize=args.quantize, out=args.out,
                        max_images=args.max_images, progress=sys.stderr.isatty())
    print(result.summary())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from floranet.serve import run_server

    run_server(args.run_dir, host=args.host, port=args.port, unsafe=args.unsafe,
               max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, runtime=args.runtime,
               precision=args.precision)
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from floranet.models import backbones

    for name in backbones.names():
        print(name)
    return 0


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "doctor": cmd_doctor, "fetch": cmd_fetch,
            "evaluate": cmd_evaluate, "predict": cmd_predict, "report": cmd_report, "explain": cmd_explain, "export": cmd_export, "serve": cmd_serve, "backbones": cmd_backbones}

if __name__ == "__main__":
    sys.exit(main())
