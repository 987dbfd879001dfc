"""Markdown tables of a benchmarks/run.py result (the JSON has every repeat; the tables show medians and ratios)."""

from __future__ import annotations


# Issue 20's goals, quoted beside the figures: speed-ups over PyTorch eager (ONNX at batch 1) and of compiled training.
ONNX_GOALS = {"ort_fp32": 1.3, "ort_int8": 2.0}
COMPILE_TRAIN_GOAL = 1.2


def _fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def _isa(machine: dict) -> str:
    """The instruction sets the figures were measured with; results written before they were recorded say so."""
    if "isa" not in machine:
        return "instruction sets not recorded"
    isa = machine["isa"] or "instruction sets unknown"
    return f"{isa}; torch CPU kernels {machine.get('torch_cpu_capability') or 'unknown'}"


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Machine: {m['cpu']} ({_isa(m)}), {m['usable_cores']} usable cores ({m['logical_cores']} logical), "
        f"{m['memory_gib']} GiB, torch {m['torch']} ({m['torch_threads']} threads), numpy {m['numpy']}"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        + f"; 1-minute load average at start {_fmt(m['load_average_1min_at_start'], 1)}.",
        f"Command: `{result['command']}` ({result['started']}). Figures: median of repeated runs after warm-up; "
        "ratios: median of per-round ratios of interleaved runs.",
        "",
    ]
    if result.get("model"):
        lines += ["**DeMo, ViT-B/16 shapes** (PIFE + HDM + ATMoE, random weights; train = forward + ReID loss + "
                  "backward + Adam step)", "",
                  "| mode | H x W | batch | triples/s | s / batch | peak memory (GiB) | GFLOP / triple | TFLOP/s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in result["model"]:
            lines.append(f"| {r['mode']} | {r['image_size']} | {r['batch']} | {r['triples_per_s']:.2f} | "
                         f"{r['median_s']:.2f} | {_fmt(r['peak_memory_gib'])} | {r['gflop_per_triple']:.1f} | "
                         f"{r['achieved_tflops']:.3f} |")
        if result.get("cpu_matmul_gflops"):
            lines.append(f"\nReference: this CPU's fp32 matmul (torch.mm 2048^2) reaches "
                         f"{result['cpu_matmul_gflops']:.0f} GFLOP/s.")
        lines.append("")
    h = result.get("heads")
    if h:
        lines += [f"**Heads alone** (HDM + ATMoE forward + backward, training mode, batch {h['batch']}, C = {h['dim']}, "
                  f"{h['tokens_per_modality']} tokens per modality, {h['atmoe_heads']} ATMoE heads)", "",
                  "| implementation | s / step | operator calls |", "|---|---|---|",
                  f"| module per expert (before) | {h['median_s']['module_per_expert']:.3f} | "
                  f"{h['operator_calls']['module_per_expert']} |",
                  f"| batched (now) | {h['median_s']['batched']:.3f} | {h['operator_calls']['batched']} |",
                  f"| **ratio** | **{h['speedup_median_of_pairs']:.1f}x faster** | "
                  f"**{h['operator_call_ratio']:.1%}** |", ""]
    if result.get("ranking"):
        lines += ["**Ranking** (`reid_metrics` vs the authors' per-query argsort loop, same float32 matrix, "
                  "100 identities, 8 cameras)", "",
                  "| Q x G | regime (mAP) | reference (s) | reid_metrics (s) | speed-up | max diff (stable ref.) |",
                  "|---|---|---|---|---|---|"]
        for r in result["ranking"]:
            ref, diff = r["median_s"].get("reference"), r.get("max_diff_vs_stable_reference")
            speedup = r.get("speedup_median_of_pairs")
            lines.append(f"| {r['size']} | {r['regime']} ({r['mAP']:.2f}) | {_fmt(ref, 3)} | "
                         f"{r['median_s']['reid_metrics']:.3f} | {'-' if speedup is None else f'{speedup:.1f}x'} | "
                         f"{'-' if diff is None else f'{diff:.1e}'} |")
        lines.append("")
    if result.get("decode"):
        lines += ["**Decoding** (3 JPEGs per triple, stored 256x128, through the training collator)", "",
                  "| output H x W | workers | triples/s | per worker |", "|---|---|---|---|"]
        for r in result["decode"]:
            lines.append(f"| {r['output_size']} | {r['workers']} | {r['triples_per_s']:.0f} | "
                         f"{r['triples_per_s_per_worker']:.0f} |")
        lines.append("")
    if result.get("retrieval"):
        lines += _retrieval_table(result["retrieval"])
    if result.get("retrieval_stores"):
        lines += _store_table(result["retrieval_stores"])
    c = result.get("compile")
    if c:
        lines += [f"**torch.compile (inductor) vs eager**, DeMo ViT-B/16 shapes, {c['image_size']}, batch {c['batch']} "
                  f"(amp: {c['amp'] or 'none'}; interleaved; speed-up = median of per-round eager / compiled)", "",
                  "| mode | eager (s) | compiled (s) | speed-up | compile time (s) |", "|---|---|---|---|---|"]
        for mode in ("train", "inference"):
            r = c[mode]
            lines.append(f"| {mode} | {r['median_s']['eager']:.2f} | {r['median_s']['compiled']:.2f} | "
                         f"{r['speedup']:.2f}x | {r['compile_s']:.0f} |")
        got = c["train"]["speedup"]
        lines.append(f"\nGoal: compiled training >= {COMPILE_TRAIN_GOAL}x eager on CPU: {got:.2f}x, "
                     + ("met" if got >= COMPILE_TRAIN_GOAL else f"missed by {COMPILE_TRAIN_GOAL - got:.2f}x"))
        for mode in ("train",):
            if c[mode].get("profile_eager"):
                lines += ["", f"Where a {mode} step's time goes (self CPU time, top operators; eager / compiled):", "",
                          "| eager op | share | compiled op | share |", "|---|---|---|---|"]
                for a, b in zip(c[mode]["profile_eager"], c[mode]["profile_compiled"]):
                    lines.append(f"| `{a['op']}` | {a['share']:.1%} | `{b['op']}` | {b['share']:.1%} |")
        lines.append("")
    o = result.get("onnx")
    if o:
        names = ("pytorch_eager_fp32", "ort_fp32", "ort_int8")
        lines += [f"**CPU deployment**: {o['model']}, {o['image_size']}, {o['threads']} thread(s); ONNX files "
                  f"{o['file_mib']['fp32']:.0f} MiB (fp32) / {o['file_mib']['int8']:.0f} MiB (int8); interleaved, "
                  "speed-up = median of per-round ratios to PyTorch eager", "",
                  "| batch | PyTorch eager fp32 (triples/s) | ORT fp32 | ORT int8 | ORT fp32 speed-up | ORT int8 speed-up "
                  "| int8 cosine to PyTorch (mean / min) |", "|---|---|---|---|---|---|---|"]
        for r in o["rows"]:
            t, q = r["triples_per_s"], r["cosine_to_pytorch"]["ort_int8"]
            lines.append(f"| {r['batch']} | {t[names[0]]:.2f} | {t[names[1]]:.2f} | {t[names[2]]:.2f} | "
                         f"{r['ratio_median']['ort_fp32']:.2f}x | {r['ratio_median']['ort_int8']:.2f}x | "
                         f"{q['mean']:.5f} / {q['min']:.5f} |")
        batch_one = next((r for r in o["rows"] if r["batch"] == 1), None)
        if batch_one:
            for name, goal in (("ort_fp32", ONNX_GOALS["ort_fp32"]), ("ort_int8", ONNX_GOALS["ort_int8"])):
                got = batch_one["ratio_median"][name]
                lines.append(f"\nGoal at batch 1: {name} >= {goal}x PyTorch eager: {got:.2f}x, "
                             + ("met" if got >= goal else f"missed by {goal - got:.2f}x"))
        ret = o.get("retrieval")
        if ret:
            lines += ["", f"Retrieval with each ({ret['checkpoint']} on {ret['dataset']}):", "",
                      "| contender | mAP | Rank-1 | cosine to PyTorch (mean / min) |", "|---|---|---|---|"]
            for name in names:
                e = ret["contenders"][name]
                cos = e.get("cosine_to_pytorch")
                lines.append(f"| {name} | {e['mAP']:.2f} | {e['Rank-1']:.2f} | "
                             + (f"{cos['mean']:.5f} / {cos['min']:.5f} |" if cos else "- |"))
        lines.append("")
    g = result.get("gpu_fraction")
    if g:
        lines += [f"**Fraction of bf16 peak** ({g['gpu']}, {_fmt(g['bf16_peak_tflops'], 0)} TFLOP/s dense bf16; batch "
                  f"{g['batch']} triples, {g['image_size']}, bf16 autocast, compile={g['compile']}, "
                  f"attention={g['attention']})", "", "| mode | triples/s | TFLOP/s | fraction of peak |",
                  "|---|---|---|---|"]
        for mode in ("inference", "train"):
            r = g[mode]
            lines.append(f"| {mode} | {r['triples_per_s']:.1f} | {r['achieved_tflops']:.1f} | "
                         f"{r['fraction_of_peak']:.1%} |")
        lines.append("")
    return "\n".join(lines)


def _retrieval_table(rows: list[dict]) -> list[str]:
    lines = ["**Gallery search** (synthetic clustered embeddings, `benchmarks/retrieval_suite.py`; latency = median of "
             "one query at a time on 1 thread; recall@10 against exact search; build on 2 threads)", "",
             "| model (dim) | gallery rows | index | nprobe | build (s) | index memory (GiB) | median latency (ms) | "
             "recall@10 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"{r.get('model', '?')} ({r['dim']})"
        for s in r["sweep"]:
            mark = "**" if s["nprobe"] == r.get("chosen_nprobe") else ""
            lines.append(f"| {name} | {r['rows']:,} | {r['index']} | {mark}{s['nprobe']}{mark} | {r['build_s']:.0f} | "
                         f"{r['index_memory_gib']:.3f} | {mark}{s['median_latency_ms']:.2f}{mark} | "
                         f"{mark}{s['recall_at_10']:.3f}{mark} |")
        e = r["exact"]
        lines.append(f"| {name} | {r['rows']:,} | exact ({e['how']}) | - | {_fmt(e['build_s'], 0)} | "
                     f"{e['index_memory_gib']:.2f} | {e['median_latency_ms']:.1f} | 1.000 |")
    lines += ["", "Bold: the smallest nprobe meeting recall@10 >= 0.95 within 20 ms. Peak process memory per case: "
              + ", ".join(f"{r.get('model', '?')} {r['rows']:,}: {_fmt(r.get('peak_rss_gib'), 1)} GiB" for r in rows)
              + ".", ""]
    return lines


def _store_table(rows: list[dict]) -> list[str]:
    lines = ["**Gallery stores side by side** (`benchmarks/run.py --only retrieval --store faiss milvus`; the same "
             "synthetic clustered rows; append = 10k more rows into the built gallery; latency = median of one query "
             "at a time on 1 thread, Milvus through its client; recall@10 against exact search over all rows)", "",
             "| model (dim) | rows | store | index | build or insert + index wait (s) | appended rows/s | "
             "median latency (ms) | "
             "recall@10 | memory (GiB) | peak RSS (GiB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for s in r["stores"]:
            build = (f"{s['insert_s']:.0f} + {s['index_s']:.0f}" if "index_s" in s else f"{s['build_s']:.0f}")
            lines.append(f"| {r['model']} ({r['dim']}) | {r['rows']:,} | {s['store']} | {s['index']} | "
                         f"{build} | {s['append_rows_per_s']:,.0f} | {s['median_latency_ms']:.2f} | "
                         f"{s['recall_at_10']:.3f} | {s['memory_gib']:.2f} ({s['memory_is']}) | "
                         f"{_fmt(s.get('peak_rss_gib'), 1)} |")
    lines.append("")
    return lines
