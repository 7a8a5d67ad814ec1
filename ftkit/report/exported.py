"""The report's export section: the files the export stage wrote, the check with plain transformers, and each GGUF
file's round trip against the float32 merge. Reads the figures the stage recorded; no torch.
"""

from __future__ import annotations

from ftkit.report.markup import esc, fmt, html_table


def export_section(exported: dict) -> str:
    """The export: its files, the plain-transformers check, and the GGUF files with their round-trip figures."""
    if not (exported.get("merged") or exported.get("adapter")):
        return ""
    check = exported.get("check", {})
    same = (f"; loaded with plain transformers, {check['same_as_eval']} of {check['prompts']} outputs match the eval "
            "stage's" if "same_as_eval" in check else "")
    pushed = f"; pushed to {exported['pushed_to']}" if exported.get("pushed_to") else ""
    files = ", ".join(str(exported[k]) for k in ("merged", "adapter") if exported.get(k))
    return (f"<h3>Export</h3><p>The {esc(exported.get('model'))} model: {esc(files)} in the run directory"
            f"{esc(same)}{esc(pushed)}.</p>" + _gguf(exported.get("gguf", {}), exported.get("gguf_check", {})))


def _gguf(files: dict, check: dict) -> str:
    """The GGUF files and how each, read back by transformers (and run by llama.cpp where it is installed), compares
    with the float32 merge."""
    if not files:
        return ""
    n = check.get("prompts", 0)
    metric = next((k for k in check.get("merged", {})), None)
    rows = []
    for kind, written in files.items():
        c = check.get(kind, {})
        rows.append([written["file"], "transformers", f"{written['mb']:.1f}"] + (_checked(c, n, metric) if c else
                                                                                 ["-"] * 6))
        if c.get("llama_cpp"):
            ran = c["llama_cpp"]
            rows.append([written["file"], "llama.cpp", "", f"{ran['tokenizer_same']}/{n}", "", "", "",
                         f"{ran['greedy_same']}/{n}", fmt(ran.get(metric)) if metric in ran else "-"])
    header = ["file", "read by", "MB", "prompts tokenized alike", "chat template kept", "largest logit difference",
              "same top token", "same greedy reply", f"{metric} (merged: {fmt(check['merged'][metric])})"
              if metric else "score"]
    return ("<p>GGUF files (Ollama: <code>ollama create NAME -f</code> the Modelfile beside each), compared with the "
            f"float32 merge they were written from on {n} test prompts:</p>" + html_table(header, rows))


def _checked(c: dict, n: int, metric: str | None) -> list[str]:
    return [f"{c['tokenizer_same']}/{n}", "yes" if c["chat_template_same"] else "no",
            f"{c['max_logit_diff']:.4f} ({c['max_logit_diff_over_std']:.3f} sd)", f"{c['top1_same']:.1%}",
            f"{c['greedy_same']}/{n}", fmt(c[metric]) if metric in c else "-"]
