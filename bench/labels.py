"""Label extraction benchmark: pacsnode's extractor and the reference workflow's plain fuzzy
matching on the same generated reports, one core, side by side. See bench/README.md.

    python -m bench.labels [--reports 100000] [--baseline-reports 20000] [--seed 7]
                           [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from labeling.baseline import FuzzyBaseline
from labeling.extract import Extractor
from labeling.tasks import load_tasks

console = Console(stderr=True)

# (organ task, zh site, en site, zh malignant, en malignant, zh benign, en benign)
_ORGANS = (
    (
        "pancreatic_cancer",
        "胰头",
        "pancreatic head",
        "胰腺癌",
        "pancreatic adenocarcinoma",
        "胰腺假性囊肿",
        "pancreatic pseudocyst",
    ),
    (
        "liver_cancer",
        "肝右叶",
        "liver",
        "肝细胞癌",
        "hepatocellular carcinoma",
        "肝囊肿",
        "hepatic cyst",
    ),
    (
        "lung_nodule",
        "右肺上叶",
        "right upper lobe",
        "周围型肺癌",
        "lung adenocarcinoma",
        "钙化结节",
        "calcified granuloma",
    ),
    (
        "breast_cancer",
        "左乳",
        "left breast",
        "乳腺癌",
        "breast carcinoma",
        "纤维腺瘤",
        "fibroadenoma",
    ),
)
_TYPOS = {
    "carcinoma": "carcinomma",
    "hepatocellular": "hepatocelular",
    "suspicious": "suspicous",
    "adenocarcinoma": "adenocarcnoma",
    "malignancy": "malignacy",
    "evidence": "evidance",
}
_OTHER_ZH = (
    "胆总管无扩张，胆囊不大，壁不厚，腔内未见异常密度影。",
    "腹膜后未见肿大淋巴结，腹腔内未见积液。",
    "所见骨质未见明确破坏。",
    "双肾未见异常。",
    "脾脏大小正常。",
    "胆囊壁光滑。",
    "L4/5椎间盘突出。",
    "甲状腺右叶结节，TI-RADS 3类。",
)
_OTHER_EN = (
    "No intra- or extrahepatic biliary ductal dilatation. The gallbladder is normally distended.",
    "No retroperitoneal or mesenteric lymphadenopathy. No free fluid.",
    "Visualized osseous structures show no aggressive lesion.",
    "The kidneys are normal.",
    "No ascites.",
    "Mild degenerative change of the spine.",
    "Gallbladder is unremarkable.",
    "Small hiatal hernia.",
)


@dataclass(frozen=True)
class Generated:
    text: str
    report_type: str
    expected: dict[str, int]


def _finding(rng: random.Random, organ: tuple[str, ...], zh: bool) -> tuple[str, int]:
    _, site_zh, site_en, bad_zh, bad_en, good_zh, good_en = organ
    size = rng.choice((4, 6, 9, 12, 18, 25, 32))
    kind = rng.randrange(6)
    if zh:
        return [
            (f"{site_zh}见一约{size / 10:.1f}cm肿块，{bad_zh}。", 1),
            (f"{site_zh}结节约{size}mm，考虑{bad_zh}可能。", 2),
            (f"{site_zh}未见明显恶性征象，未见{bad_zh}。", 0),
            (f"{site_zh}{good_zh}。", 0),
            (f"{site_zh}见低密度灶，{bad_zh}待排。", 2),
            (f"{site_zh}形态大小正常，未见异常。", 0),
        ][kind]
    return [
        (f"{size} mm mass in the {site_en}, consistent with {bad_en}.", 1),
        (f"{size} mm nodule in the {site_en}, suspicious for {bad_en}.", 2),
        (f"No evidence of {bad_en} in the {site_en}.", 0),
        (f"{good_en.capitalize()} in the {site_en}.", 0),
        (f"Lesion in the {site_en}; {bad_en} cannot be excluded.", 2),
        (f"The {site_en} is unremarkable.", 0),
    ][kind]


def generate(count: int, seed: int) -> list[Generated]:
    """``count`` reports mixing languages, organs, negations, hedges, history and typos."""
    rng = random.Random(seed)
    reports = []
    for _ in range(count):
        zh = rng.random() < 0.5
        organs = rng.sample(_ORGANS, rng.choice((1, 1, 2, 3)))
        expected = {organ[0]: -1 for organ in _ORGANS}
        findings, conclusion = [], []
        for organ in organs:
            sentence, value = _finding(rng, organ, zh)
            if organ[0] == "breast_cancer" and value == 1:
                sentence += " BI-RADS 6类。" if zh else " BI-RADS 6."
            expected[organ[0]] = value
            conclusion.append(sentence)
            findings.append(rng.choice(_OTHER_ZH if zh else _OTHER_EN))
        findings.extend(rng.sample(_OTHER_ZH if zh else _OTHER_EN, rng.randint(2, 4)))
        rng.shuffle(findings)
        technique = (
            "检查方法：螺旋CT平扫及三期增强扫描，层厚5mm，与2023-11-02片比较。"
            if zh
            else "Technique: contrast-enhanced CT in arterial and portal venous phases, "
            "5 mm slices, compared with the study of 2023-11-02. "
        )
        history = ""
        if rng.random() < 0.2:
            history = (
                "病史：结肠癌术后。" if zh else "History: colon cancer, status post resection. "
            )
        text = (
            f"{history}{technique}\n检查所见：{''.join(findings)}\n诊断意见：{''.join(conclusion)}"
            if zh
            else f"{history}{technique}\nFindings: {' '.join(findings)}\n"
            f"Impression: {' '.join(conclusion)}"
        )
        if not zh and rng.random() < 0.1:
            word = rng.choice(sorted(_TYPOS))
            text = text.replace(word, _TYPOS[word])
        reports.append(Generated(text, "radiology", expected))
    return reports


def _run(extract: Extractor | FuzzyBaseline, reports: Sequence[Generated]) -> tuple[float, float]:
    agree = 0
    started = time.perf_counter()
    for report in reports:
        labels = extract.extract(report.text, report.report_type)
        agree += all(labels[task].value == value for task, value in report.expected.items())
    return time.perf_counter() - started, agree / len(reports)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.labels", description=__doc__)
    parser.add_argument("--reports", type=int, default=100_000)
    parser.add_argument(
        "--baseline-reports",
        type=int,
        default=20_000,
        help="reports for the (slower) reference method; a prefix of the same reports",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", help="write the figures as JSON to this file")
    args = parser.parse_args(argv)

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    tasks = load_tasks()
    console.print(f"generating {args.reports:,} reports (seed {args.seed}) ...")
    reports = generate(args.reports, args.seed)
    mean_chars = sum(len(r.text) for r in reports) / len(reports)
    results = {}
    for name, extractor, subset in (
        ("pacsnode", Extractor(tasks), reports),
        ("reference fuzzy", FuzzyBaseline(tasks), reports[: args.baseline_reports]),
    ):
        console.print(f"{name}: {len(subset):,} reports ...", end=" ")
        seconds, agreement = _run(extractor, subset)
        results[name] = {
            "reports": len(subset),
            "seconds": round(seconds, 2),
            "reports_per_s": round(len(subset) / seconds, 1),
            "all_tasks_as_generated": round(agreement, 4),
        }
        console.print(f"{len(subset) / seconds:,.0f} reports/s")

    table = Table(title=f"label extraction, one core, mean {mean_chars:.0f} characters/report")
    for column in ("method", "reports", "seconds", "reports/s", "all 4 tasks as generated"):
        table.add_column(column, justify="right")
    for name, figures in results.items():
        table.add_row(
            name,
            f"{figures['reports']:,}",
            f"{figures['seconds']:.1f}",
            f"{figures['reports_per_s']:,.0f}",
            f"{figures['all_tasks_as_generated']:.1%}",
        )
    Console().print(table)
    ratio = results["pacsnode"]["reports_per_s"] / results["reference fuzzy"]["reports_per_s"]
    Console().print(f"pacsnode / reference fuzzy: {ratio:.2f}x the reports per second")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(
                {"machine": platform.platform(), "python": platform.python_version(), **results},
                handle,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
