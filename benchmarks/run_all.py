"""Runs the benchmark suite (`make bench`) and regenerates benchmarks/README.md from results/*.json.

    python benchmarks/run_all.py [--only decode forward train accuracy padding serve predict finetune audit unknown ...]
                                 [--readme-only]

Each benchmark prints its own table and writes results/<name>.json with the
machine it ran on; this script then rewrites README.md from whatever results exist.
Benchmarks that need ../shared are skipped when it is absent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FLOWERS, RESULTS, ROOT, control_noise, python, table

BENCH = ROOT / "benchmarks"
SUITE = {  # name -> (script, needs ../shared)
    "decode": ("bench_decode.py", False),
    "forward": ("bench_forward.py", False),
    "predict": ("bench_predict.py", False),
    "finetune": ("bench_finetune.py", False),
    "train": ("bench_train.py", True),
    "accuracy": ("bench_accuracy.py", True),
    "accuracy_bundled": ("bench_accuracy.py", True),
    "padding": ("bench_padding.py", True),
    "bf16": ("bench_bf16.py", True),
    "int8": ("bench_bf16.py", True),
    "time_to_accuracy": ("bench_time_to_accuracy.py", True),
    "serve": ("bench_serve.py", False),
    "serve_tiny": ("bench_serve.py", False),
    "fairness": ("bench_fairness.py", False),
    "audit": ("bench_audit.py", True),
    "unknown": ("bench_unknown.py", True),
    "unknown_recommended": ("bench_unknown.py", True),
    "unknown_screens": ("bench_unknown_screens.py", True),
    "unknown_finetune_screen": ("bench_unknown_finetune_screen.py", True),
    "unknown_descriptors": ("bench_unknown_descriptors.py", True),
    "ood_precision": ("bench_ood_precision.py", False),
    "demo_recipe": ("bench_demo_recipe.py", False),
}


# The arguments each committed result was made with (the name is the result's file).
EXTRA_ARGS = {
    # ../shared's conversion in Keras's own MobileNetV2 (the script's default is the bundled weights)
    "accuracy": [
        "--backbone",
        "keras:mobilenet_v2",
        "--weights",
        "../shared/weights/mobilenet_v2_imagenet_tv_notop.weights.h5",  # relative: run() runs from the repository
        "--result",
        "accuracy",
    ],
    "accuracy_bundled": ["--result", "accuracy_bundled"],
    "int8": ["--precision", "int8", "--full-runs", "3"],
    "unknown_recommended": ["--preset", "recommended"],
    "time_to_accuracy": ["--resnet50-memory"],
    "serve_tiny": ["--model", "tiny"],
}


def run(names: list[str]) -> None:
    for name in names:
        script, needs_shared = SUITE[name]
        if not (BENCH / script).exists():
            print(f"== {name}: {script} missing, skipped")
            continue
        if needs_shared and not FLOWERS.is_dir():
            print(f"== {name}: ../shared/data/flower_photos absent, skipped")
            continue
        print(f"== {name}: python benchmarks/{script}", flush=True)
        extra_args = EXTRA_ARGS.get(name, [])
        code = subprocess.call([python(), str(BENCH / script), *extra_args], cwd=ROOT)
        if code:
            print(f"== {name} failed with exit code {code}")


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _low_precision(r: dict) -> str:
    full, low = r["full_model"], r.get("precision", "bf16")
    text = (
        table(r["extraction"], list(r["extraction"][0]))
        + "\n\n"
        + table(
            r["summary"], ["preset", "change", "mean_points", "std_points", "min", "max", "seeds", "fp32_accuracy_mean"]
        )
        + f"\n\nFull classifier, OpenVINO {low} vs TensorFlow fp32 on {full['images']} validation images: top-1 "
        f"agreement {full['top1_agreement']:.4f}, accuracy change {full['delta_points']:+.2f} points."
        f"\n\nThe fp32 controls (OpenVINO fp32 for TensorFlow fp32: features equal to 1e-6) moved accuracy by up to "
        f"{control_noise(r['summary']):.2f} points (|mean| + sd over the seeds): a change smaller than that is "
        "not told apart from training the head again."
    )
    runs = r.get("full_runs")
    if runs:
        text += (
            f"\n\nWhole `floranet train` runs (recommended preset; stage-1 features and the stage-2 prefix in {low}):"
            "\n\n"
            + table(runs["runs"], list(runs["runs"][0]))
            + f"\n\nMean change {runs['mean_points']:+.2f} points (sd {runs['std_points']}); stage 1 "
            f"{runs['stage1_speed']}x and stage 2 {runs['stage2_speed']}x the speed of fp32."
        )
    return text + (
        f"\n\nLargest change from {low}: {r['max_mean_delta_points']} points (target < {r['target_points']}): "
        f"{'pass' if r['passed'] else 'FAIL'}; the largest of {_low_parts(r)}."
    )


def _low_parts(r: dict) -> str:
    """What a precision result's max_mean_delta_points is the largest of: the per-seed means of the low-precision
    rows, the full classifier's single run and (where run) the whole runs' mean."""
    low = r.get("precision", "bf16")
    rows = [s for s in r["summary"] if s["change"].startswith(low)]
    best = max(rows, key=lambda s: abs(s["mean_points"]))
    parts = [
        f"the {best['seeds']}-seed means (at most {abs(best['mean_points']):.2f}: {best['preset']} preset, "
        f"{best['change']})",
        f"the full classifier's one run (tutorial preset, seed 0: {abs(r['full_model']['delta_points']):.2f})",
    ]
    if r.get("full_runs"):
        parts.append(f"the whole runs' mean ({abs(r['full_runs']['mean_points']):.2f})")
    return "; ".join(parts)


def _accuracy(r: dict) -> str:
    return (
        table(r["rows"], ["recipe", "val_accuracy", "wall_seconds", "peak_rss_mib"])
        + f"\n\nGain: {r['gain_points']:+.1f} points."
        + (f" Backbone {r['backbone']}, weights {r['weights']}." if "backbone" in r else "")
    )


def _time_to_accuracy(r: dict) -> str:
    cols = ["run", "val_accuracy", "wall_seconds", "time_vs_baseline", "stage1_s", "stage2_s", "peak_rss_mib"]
    text = table(r["rows"], cols)
    mem = r.get("resnet50_memory")
    if mem:
        text += (
            f"\n\nResNet50, 180 px, recommended preset (random weights, same split): peak RSS "
            f"{mem['peak_rss_mib']:.0f} MiB in {mem['wall_seconds']:.0f} s (target < 4096 MiB)."
        )
    return text


def _predict(r: dict) -> str:
    text = ""
    if r.get("cold_and_warm"):
        cols = [
            "model",
            "code",
            "cold_s",
            "cold_vs_baseline",
            "cold_peak_rss_mib",
            "warm_ms",
            "warm_vs_baseline",
            "warm_via",
        ]
        text = "Cold (new process) and warm, vs the baseline:\n\n" + table(r["cold_and_warm"], cols) + "\n\n"
    text += "Warm, in-process (ResNet50, model.keras):\n\n" + table(r["rows"], list(r["rows"][0]))
    return text + (f"\n\n{r['note']}" if r.get("note") else "")


def _model(m: dict) -> str:
    """The CPU's family and model, where the result records them (results written from df8d4e6 on)."""
    return f" ({m['cpu_model']})" if m.get("cpu_model") and m["cpu_model"] != "?" else ""


def _cores(m: dict) -> str:
    """The machine's cores, and the ones the measurement could use where they differ (recorded since 2026-11-28)."""
    usable, total = m.get("usable_cores"), m.get("cores", "?")
    return f"{usable} of {total}" if usable is not None and usable != total else str(total)


def _machine(m: dict) -> str:
    kind = "bf16 CPU (native AVX512_BF16/AMX)" if m.get("native_bf16") else "CPU without native bf16"
    if "native_bf16" not in m:
        from floranet.utils.system import BF16_FLAGS

        kind = "bf16 CPU" if BF16_FLAGS & set(m.get("cpu_flags", [])) else "CPU without native bf16"
    return (
        f"Machine: {m.get('cpu', '?')}{_model(m)}, {_cores(m)} cores, "
        f"flags {', '.join(m.get('cpu_flags', []))}: "
        f"**{kind}**; TensorFlow {m.get('tensorflow', '?')}{_code(m)}"
    )


def _code(m: dict) -> str:
    """The commit measured and when, where the result records them (machine_info's git_commit, date_utc)."""
    if "git_commit" not in m:
        return ""
    return f"; code {m['git_commit'] or 'not a git checkout'}, {m.get('date_utc', '?')}"


def _serve(r: dict) -> str:
    rows = []
    for kind, s in r["served"].items():
        rows.append(
            {
                "load": f"served, {kind} client",
                "requests": s["requests"],
                "errors": s["errors"],
                "p50_ms": s["p50_ms"],
                "p99_ms": s["p99_ms"],
                "img_per_s": s["throughput_rps"],
                "mean_batch": s["mean_batch"],
                "ratio_vs_offline": s["ratio_served_over_offline"],
            }
        )
    off = r["offline"]
    rows.append({"load": f"offline, batch {off['batch']}", "img_per_s": off["throughput_ips"]})
    st = r["settings"]
    return (
        f"{st['run']}; runtime {st.get('runtime', '?')}; {st['requests']} requests per client at concurrency "
        f"{st['concurrency']}; target ratio >= {r['target_ratio']}.\n\n" + table(rows, list(rows[0]))
    )


def _fairness(r: dict) -> str:
    rows = [
        {
            "server": server,
            "attack (from 127.0.0.1)": attack,
            "victim answered (127.0.0.2)": x["answered"],
            "p50 ms": x["p50_ms"],
            "max ms": x["max_ms"],
        }
        for server, attacks in r["results"].items()
        for attack, x in attacks.items()
    ]
    return f"Each attack runs {r['seconds']:g} s beside the victim's requests.\n\n" + table(rows, list(rows[0]))


def _audit(r: dict) -> str:
    noise, dups, real = r["label_noise"], r["duplicates"], r["real_set"]
    top = [
        {"rank": i + 1, "file": f["file"], "given": f["given_label"], "suggested": f["suggested_label"]}
        for i, f in enumerate(real["top20"])
    ]
    return (
        table(r["rows"], ["check", "value", "target"])
        + f"\n\nLabel noise: {noise['moved']} of {noise['images']} images moved into a wrong class folder; cleanlab "
        f"flagged {noise['flagged']} (recall {noise['flagged_recall']}, precision {noise['flagged_precision']}); among "
        f"the moved images in the top N it suggests the true class for {noise['suggested_true_class_share']:.0%}.\n\n"
        "Near-duplicates, planted copies against every other pair, by similarity threshold (floranet used "
        + (f"{dups['threshold']}, this set's own" if "threshold" in dups else "0.42")
        + f"; {dups['pairs_flagged']} pairs flagged):\n\n"
        + table(dups["threshold_sweep"], list(dups["threshold_sweep"][0]))
        + "\n\nThe real flower_photos, top 20 label issues (thumbnails: `results/audit_real_top20.png`):\n\n"
        + table(top, ["rank", "file", "given", "suggested"])
        + (f"\n\n{r['note']}" if r.get("note") else "")
    )


def _unknown(r: dict) -> str:
    per = [{k: v for k, v in row.items() if k != "methods"} for row in r["per_class"]]
    # Results from before class_mean joined `combined` do not name its parts: they were these three.
    method = r.get("default_method", "combined")
    parts = ", ".join(r.get("combined_parts", ["knn_head", "knn", "energy"]))
    return (
        f"floranet's default answer (`{method}`{', the mean of z-scored ' + parts if method == 'combined' else ''}), "
        "through `predict` on each run: mean AUROC "
        f"{r['mean_auroc']} (target >= {r['target_mean_auroc']}), mean false-known rate at 95% known kept "
        f"{r['mean_false_known_at_95']}.\n\n"
        + table(per, list(per[0]))
        + "\n\nEvery candidate on the same embeddings (AUROC per held-out class; threshold at 95% known kept):\n\n"
        + table(r["methods"], list(r["methods"][0]))
        + (
            "\n\nNon-flower photos (a run on all 5 classes): "
            + _non_flower_count(r)
            + "\n\n"
            + table(r["non_flowers"], ["image", "unknown", "ood_score", "top_class"])
            if r.get("non_flowers")
            else ""
        )
        + (
            "\n\nEvery candidate on the same run's embeddings (non-flower photos answered unknown at 95% known "
            "kept; AUROC against the known validation images):\n\n"
            + table(r["non_flowers_methods"], list(r["non_flowers_methods"][0]))
            if r.get("non_flowers_methods")
            else ""
        )
        + (f"\n\n{r['note']}" if r.get("note") else "")
    )


def _non_flower_count(r: dict) -> str:
    summary = r["non_flowers_summary"]
    return (
        f"{summary['answered_unknown']} of {summary['images']} answered unknown; AUROC against the known "
        f"validation images {summary['auroc']}."
    )


def _unknown_variants() -> list[tuple[str, str, Callable[[dict], str]]]:
    """A section per ``bench_unknown.py [--preset P] --set ...`` result: its own file, named after the settings
    it changed (the section's command line gives them exactly)."""
    out = []
    for p in sorted(RESULTS.glob("unknown_*.json")):
        if p.stem in SUITE:  # unknown_recommended, unknown_screens: a section of their own
            continue
        preset, prefix = (
            ("recommended", "unknown_recommended_")
            if p.stem.startswith("unknown_recommended_")
            else (
                "tutorial",
                "unknown_",
            )
        )
        out.append((p.stem, f"Unknown answer, {preset} preset, variant `{p.stem.removeprefix(prefix)}`", _unknown))
    return out


def _screen_vs_trained(r: dict) -> str:
    """The screen's kNN and energy AUROCs beside bench_unknown's on each preset's trained runs (kNN at k=1)."""
    screen = {row["method"]: row["mean_auroc"] for row in r["rows"]}
    here = (screen.get("knn pooled (reference)"), screen.get("energy (one head)"))
    parts = []
    for name, preset in (("unknown_recommended", "recommended"), ("unknown", "tutorial")):
        trained = _load(name)
        rows = {m["method"]: m["mean_auroc"] for m in trained["methods"]} if trained else {}
        if rows.get("knn (k=1)") is not None and rows.get("energy") is not None:
            parts.append(f"{rows['knn (k=1)']} and {rows['energy']} with the {preset} preset")
    if not parts or None in here:
        return ""
    return f" (its kNN (k=1) and energy AUROCs: {'; '.join(parts)}; here {here[0]} and {here[1]})"


def _finetune_screen(r: dict) -> str:
    recipes = list(next(iter(r["per_class"].values()))["train_seconds"])
    seconds = {k: sum(c["train_seconds"][k] for c in r["per_class"].values()) / len(r["per_class"]) for k in recipes}
    return (
        table(r["rows"], list(r["rows"][0]))
        + f"\n\n{r['images']} images at {r['image_size']} px, split seed {r['seed']}; {r['views']} augmented views "
        f"of each image, {r['epochs']} fine-tuning epochs; training "
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
        + " per held-out class on average. Compare rows within this table: the cross-entropy rows are floranet's "
        "recipe on the same views and epochs." + (f" {r['note']}" if r.get("note") else "")
    )


def _older_than(field: str, consequence: str) -> str:
    """The text ' (A and B are older: CONSEQUENCE)' naming the results whose machine lacks ``field`` ('' if none)."""
    older = sorted(p.stem for p in RESULTS.glob("*.json") if field not in json.loads(p.read_text()).get("machine", {}))
    if not older:
        return ""
    names = older[0] if len(older) == 1 else ", ".join(older[:-1]) + " and " + older[-1]
    return f" ({names} {'is' if len(older) == 1 else 'are'} older: {consequence})"


def render() -> str:
    out = [
        "# Benchmarks",
        "",
        "Regenerated by `python benchmarks/run_all.py` (`make bench`); each section names the command that",
        "produced it and the machine it ran on. Ratios compare alternatives measured in the same run.",
        "",
        "## Reading runs from different CPUs",
        "",
        "floranet's auto policies decide from the CPU flags, so the same command does different work on",
        "different CPUs. On a **bf16 CPU** (AVX512_BF16 or AMX) `--precision auto` extracts features and the",
        "stage-2 prefix in OpenVINO bf16 and fine-tunes in Keras mixed bf16; on a **CPU without native bf16**",
        "(AVX2 only, most cloud VMs and laptops) it does all of that in fp32, and int8 is opt-in",
        "(`--precision int8`, see its section). Every result records the CPU flags, printed under each section;",
        "results written from c4852e3 on also record whether bf16 is native"
        + _older_than("native_bf16", "their kind is read from their flags")
        + ". A figure holds for the CPU kind it names and no other: to compare kinds,",
        "run the suite on each (`make bench`), keep each `results/` folder, and compare the *ratios* within",
        "each run (floranet vs baseline, bf16 or int8 vs fp32), never absolute seconds across machines.",
        "A bf16 CPU's speed-ups from bf16 are absent on AVX2; its fp32 rows are the closest guide to an",
        "AVX2 machine of similar clock and core count, and still only a guide.",
        "",
        'One name can cover several CPU generations: "AMD EPYC, 2 cores" ran these benchmarks on at least two',
        "(bench_forward's fp32 matrix product peaked at 184 GFLOP/s on one and 474 on the other). Results",
        "written from df8d4e6 on also record the CPU's family and model, shown beside its name; older ones do",
        "not (their `machine.platform` names the kernel build only), so compare figures of two sections only as",
        "the ratios each measured within its own run.",
        "",
        "Results that show `code COMMIT, DATE` after the machine record the commit they measured (`+dirty`: the",
        "tracked files other than benchmarks' results differed from it) and the UTC time the result was written;",
        "older results lack both, and `git log benchmarks/results/NAME.json` tells when each was committed.",
        "",
    ]
    sections = [
        ("decode", "Decode + resize vs ResNet50 forward", lambda r: table(r["rows"], list(r["rows"][0]))),
        (
            "forward",
            "Backbone forward throughput (ResNet50 features)",
            lambda r: (
                f"Matmul peak: fp32 {r['matmul_gflops']['fp32']} GFLOP/s, bf16 {r['matmul_gflops']['bf16']} GFLOP/s. "
                f"floranet auto: {r['auto']['runtime']} {r['auto']['precision']} ({r['auto']['reason']}).\n\n"
                + table(r["rows"], ["size", "batch", "runtime", "img_per_s", "vs_tf_fp32", "pct_of_peak"])
                + "\n\n"
                + table(r["checks"], list(r["checks"][0]))
                + "\n\npct_of_peak is against TensorFlow's own 4096² matrix product measured in the same run. "
                "OpenVINO's convolution kernels beat that product, hence values above 100%: the reference is "
                "TensorFlow's best, not the silicon's. The floranet row is stage 1's extractor (several "
                "batches in flight); the other rows call the runtime one batch at a time."
            ),
        ),
        ("predict", "Single-image predict: cold and warm", _predict),
        ("finetune", "Fine-tuning step throughput, fp32 vs mixed bf16", lambda r: table(r["rows"], list(r["rows"][0]))),
        (
            "train_vs_tutorial",
            "The tutorial's script vs `floranet train --preset tutorial`",
            lambda r: (
                table(r["rows"], ["job", "wall_seconds", "peak_rss_mib", "speedup_vs_tutorial"])
                + f"\n\nSpeed-up: {r['speedup']}x."
            ),
        ),
        (
            "accuracy",
            "Accuracy: recommended preset vs the tutorial's recipe (../shared's MobileNetV2 conversion, Keras's model)",
            _accuracy,
        ),
        (
            "accuracy_bundled",
            "Accuracy: recommended preset vs the tutorial's recipe (the bundled MobileNetV2 weights)",
            _accuracy,
        ),
        (
            "padding",
            "Symmetric (torchvision) vs Keras's padding, bundled MobileNetV2 weights, tutorial preset",
            lambda r: (
                table(r["rows"], ["variant", "size", "accuracy_mean", "accuracy_std", "accuracies", "num_val"])
                + f"\n\nBest: {r['best']['variant']} at {r['best']['size']} px; seeds {r['seeds']}."
            ),
        ),
        (
            "time_to_accuracy",
            "Time to accuracy: `floranet train` (recommended preset) vs the baseline",
            _time_to_accuracy,
        ),
        (
            "time_to_accuracy_runs",
            "Time to accuracy: every run of the benchmark on this code and its parent (the spread between runs)",
            lambda r: table(r["runs"], list(r["runs"][0])) + "\n\n" + r["note"],
        ),
        (
            "time_to_accuracy_before_audit",
            "Time to accuracy, before `train` gained the unknown answer and the audit (commit b4e48d7's benchmark "
            "and code: its results/time_to_accuracy.json, kept under this name; the seed-7 row overlapped other jobs)",
            _time_to_accuracy,
        ),
        ("bf16", "bf16 vs fp32: validation accuracy change (paired over seeds)", _low_precision),
        ("int8", "int8 vs fp32: speed and validation accuracy change (paired over seeds)", _low_precision),
        ("serve", "REST server under load (ResNet50, 180 px)", _serve),
        ("serve_tiny", "REST server under load, tiny model (resnet18, 96 px: overhead-bound worst case)", _serve),
        ("fairness", "REST server: one hostile client beside an ordinary one (tiny model)", _fairness),
        ("audit", "Label audit on flower_photos", _audit),
        ("unknown", "Unknown answer: each flower class held out", _unknown),
        (
            "unknown_recommended",
            "Unknown answer: each flower class held out, recommended preset (fine-tuned, `floranet train`'s default)",
            _unknown,
        ),
        *_unknown_variants(),
        (
            "unknown_screens",
            "Unknown answer: five further ideas screened on the pretrained backbone alone (no training run)",
            lambda r: (
                table(r["rows"], list(r["rows"][0]))
                + f"\n\n{r['images']} images at {r['image_size']} px, split seed {r['seed']}; one backbone pass "
                f"{r['embed_seconds']} s{r.get('timing_note', '')}. The reference row is the pooled-feature kNN "
                "that the shipped score builds on. bench_unknown scores its candidates on trained runs' "
                f"embeddings{_screen_vs_trained(r)}, so compare rows within this table, not "
                "across sections: an idea earns a training run only by beating its reference here."
            ),
        ),
        (
            "unknown_finetune_screen",
            "Unknown answer: the backbone's last stage fine-tuned with a supervised contrastive loss (screen)",
            _finetune_screen,
        ),
        (
            "unknown_descriptors",
            "Unknown answer: other descriptors and density models on the pretrained backbone, and a supervised "
            "upper bound (screen)",
            lambda r: (
                table(r["rows"], list(r["rows"][0]))
                + f"\n\n{r['images']} images at {r['image_size']} px, split seed {r['seed']} (the split of the "
                f"screen above); four backbone passes (one per rotation) {r['embed_seconds']} s"
                f"{r.get('timing_note', '')}. The upper bound "
                "is told which images are the held-out class (cross-validated), which no unknown score may be: "
                "it says the held-out class is separable in these features, not that a score can find it."
            ),
        ),
        (
            "ood_precision",
            "Unknown answer: the score through each precision (bundled mini_flowers sample)",
            lambda r: (
                table(r["rows"], list(r["rows"][0]))
                + f"\n\nThreshold {r['threshold']} (fitted on the training job's outputs), validation share kept as "
                f"recorded {r['recorded_kept']:.4f}, on {r['validation_images']} images; the scores' standard "
                f"deviation {r['score_std']}."
            ),
        ),
        (
            "demo_recipe",
            "The offline demo's recipe on the bundled sample (tutorial preset, bundled MobileNetV2, 160 px)",
            lambda r: (
                table([*r["splits"], *r["demo_split"]], ["seed", "weights", "accuracy", "correct", "train_seconds"])
                + f"\n\nMean over the seeded splits {r['mean_accuracy']:.1%} ({r['min_accuracy']:.1%} to "
                f"{r['max_accuracy']:.1%}), {r['mean_train_seconds']} s of training each. Seed 123 is the demo's own "
                "split; weights none is the same recipe from random weights."
            ),
        ),
    ]
    for name, title, fmt in sections:
        r = _load(name)
        out += [f"## {title}", ""]
        if r is None:
            out += ["(not run yet)", ""]
            continue
        out += [f"Command: `{r.get('command', '?')}`  ", _machine(r.get("machine", {})), ""]
        try:
            out += [fmt(r), ""]
        except (KeyError, IndexError, TypeError) as e:
            out += [f"(result file has an unexpected shape: {e})", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=sorted(SUITE))
    ap.add_argument("--readme-only", action="store_true")
    args = ap.parse_args()
    if not args.readme_only:
        run(args.only or list(SUITE))
    (BENCH / "README.md").write_text(render() + "\n")
    print(f"wrote {BENCH / 'README.md'}")


if __name__ == "__main__":
    main()
