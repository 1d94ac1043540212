"""Label extraction, case by case: every cue of the shipped task file, categories, sizes,
sections, typos, history, multi-finding reports, and the evidence each label carries."""

from __future__ import annotations

import re

import pytest

from labeling.baseline import FuzzyBaseline
from labeling.extract import EmptyReportError, Extractor
from labeling.tasks import DEFAULT_TASKS_FILE, TaskFileError, load_tasks

TASKS = load_tasks()
EXTRACTOR = Extractor(TASKS)


def label(text: str, task: str, report_type: str = "radiology") -> int:
    return EXTRACTOR.extract(text, report_type)[task].value


def _ascii(cue: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9 ./'-]+", cue))


# ------------------------------------------------------------------ every cue, one by one


@pytest.mark.parametrize("cue", TASKS.triggers.negation_pre)
def test_every_negation_cue_before_a_malignancy_gives_0(cue: str) -> None:
    text = f"{cue} pancreatic cancer." if _ascii(cue) else f"{cue}胰腺癌。"
    assert label(text, "pancreatic_cancer") == 0, text


@pytest.mark.parametrize("cue", TASKS.triggers.negation_post)
def test_every_negation_cue_after_a_malignancy_gives_0(cue: str) -> None:
    text = f"Pancreatic cancer {cue}." if _ascii(cue) else f"胰腺癌{cue}。"
    assert label(text, "pancreatic_cancer") == 0, text


@pytest.mark.parametrize("cue", TASKS.triggers.uncertainty_pre)
def test_every_uncertainty_cue_before_a_malignancy_gives_2(cue: str) -> None:
    text = f"{cue} hepatocellular carcinoma." if _ascii(cue) else f"{cue}肝细胞癌。"
    assert label(text, "liver_cancer") == 2, text


@pytest.mark.parametrize("cue", TASKS.triggers.uncertainty_post)
def test_every_uncertainty_cue_after_a_malignancy_gives_2(cue: str) -> None:
    text = f"Hepatocellular carcinoma {cue}." if _ascii(cue) else f"肝细胞癌{cue}。"
    assert label(text, "liver_cancer") == 2, text


@pytest.mark.parametrize("cue", TASKS.triggers.history_pre)
def test_every_history_cue_before_a_cancer_leaves_the_organ_unaddressed(cue: str) -> None:
    text = f"{cue} breast cancer." if _ascii(cue) else f"{cue}乳腺癌。"
    assert label(text, "breast_cancer") == -1, text


CHANGES = {p for phrases in TASKS.generic.classes.values() for p in phrases.all()}


@pytest.mark.parametrize("cue", [c for c in TASKS.triggers.history_post if c not in CHANGES])
def test_every_history_cue_after_a_cancer_leaves_the_organ_unaddressed(cue: str) -> None:
    text = f"Breast cancer {cue}." if _ascii(cue) else f"乳腺癌{cue}。"
    assert label(text, "breast_cancer") == -1, text


@pytest.mark.parametrize("cue", [c for c in TASKS.triggers.history_post if c in CHANGES])
def test_post_treatment_changes_put_the_cancer_in_the_past_and_address_the_organ(cue: str) -> None:
    assert label(f"乳腺癌{cue}。", "breast_cancer") == 0


@pytest.mark.parametrize("cue", TASKS.triggers.terminators)
def test_every_terminator_ends_a_negation(cue: str) -> None:
    text = (
        f"No pancreatic mass {cue} pancreatic cancer is seen."
        if _ascii(cue)
        else f"未见胰腺囊肿{cue}胰腺癌明确。"
    )
    assert label(text, "pancreatic_cancer") == 1, text


@pytest.mark.parametrize(
    "text", ["No change in the known pancreatic cancer.", "胰腺癌，较前无明显变化。"]
)
def test_pseudo_cues_do_not_negate(text: str) -> None:
    assert label(text, "pancreatic_cancer") == 1


# ------------------------------------------------------------------ the examples


@pytest.mark.parametrize(
    ("text", "task", "expected"),
    [
        ("胰腺未见明显恶性征象。", "pancreatic_cancer", 0),
        ("Liver: no evidence of malignancy.", "liver_cancer", 0),
        ("胰头占位，考虑胰腺癌。", "pancreatic_cancer", 2),
        ("肝S7结节，肝癌可能。", "liver_cancer", 2),
        ("Right upper lobe nodule, suspicious for lung cancer.", "lung_nodule", 2),
        ("Pancreatic head mass; adenocarcinoma cannot be excluded.", "pancreatic_cancer", 2),
        ("左肺下叶结节，周围型肺癌待排。", "lung_nodule", 2),
        ("胰尾低密度影，胰腺癌不除外。", "pancreatic_cancer", 2),
        ("胰腺癌伴肝多发转移。", "liver_cancer", 1),
        ("胰腺癌伴肝多发转移。", "pancreatic_cancer", 1),
        (
            "Hypermetabolic pancreatic mass with hepatic and pulmonary metastases.",
            "liver_cancer",
            1,
        ),
        ("History of breast cancer. Lungs are clear.", "breast_cancer", -1),
        ("History of breast cancer. Lungs are clear.", "lung_nodule", 0),
        ("腰椎间盘突出。", "liver_cancer", -1),
        (
            "Status post Whipple for pancreatic cancer. No evidence of recurrence.",
            "pancreatic_cancer",
            0,
        ),
        ("胰腺癌术后，吻合口旁软组织肿块增大，符合肿瘤复发。", "pancreatic_cancer", 1),
        ("乳腺癌术后改变，未见复发征象。", "breast_cancer", 0),
        ("No suspicious liver lesion.", "liver_cancer", 0),
        ("Sigmoid colon cancer. Liver is free of metastatic disease.", "liver_cancer", 0),
        ("Brain metastases from known lung cancer.", "lung_nodule", -1),
        ("甲状腺乳头状癌。", "breast_cancer", -1),
        ("结肠肝曲癌。", "liver_cancer", -1),
        ("肝细胞癌，中分化，切缘阴性。", "liver_cancer", 1),
    ],
)
def test_examples(text: str, task: str, expected: int) -> None:
    assert label(text, task) == expected


# ------------------------------------------------------------------ categories and sizes


@pytest.mark.parametrize(
    ("category", "expected"),
    [("0", 2), ("1", 0), ("2", 0), ("3", 2), ("4", 2), ("4A", 2), ("4b", 2), ("4C", 2), ("5", 2)],
)
def test_bi_rads_categories(category: str, expected: int) -> None:
    labels = EXTRACTOR.extract(f"Impression: left breast, BI-RADS {category}.")
    assert labels["breast_cancer"].value == expected
    assert labels["breast_cancer"].category == category.upper()


def test_breast_imaging_is_malignant_only_at_bi_rads_6_and_pathology_decides() -> None:
    assert label("Impression: left breast carcinoma.", "breast_cancer") == 2
    assert label("Impression: left breast carcinoma, BI-RADS 6.", "breast_cancer") == 1
    assert label("乳腺超声：右乳癌，BI-RADS 6类。", "breast_cancer") == 1
    assert (
        label("Diagnosis: left breast, core biopsy: carcinoma.", "breast_cancer", "pathology") == 1
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Lung-RADS 1. No nodules.", 0),
        ("右肺结节，Lung-RADS 2类。", 0),
        ("LungRADS 3: 7 mm nodule.", 2),
        ("Lung-RADS 4A nodule in the RML.", 2),
        ("右肺上叶结节，Lung-RADS 4X类。", 2),
    ],
)
def test_lung_rads_categories(text: str, expected: int) -> None:
    assert label(text, "lung_nodule") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("LR-1 observation.", 0),
        ("LI-RADS 2 observation in segment 3.", 0),
        ("肝S6结节，LI-RADS 3类。", 2),
        ("LR-4 observation in segment 5.", 2),
        ("LR-5 observation in segment 8.", 1),
        ("Rim-enhancing observation, LR-M.", 2),
        ("No LR-4 or LR-5 observations in the liver.", 0),
    ],
)
def test_li_rads_categories(text: str, expected: int) -> None:
    assert label(text, "liver_cancer") == expected


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("右肺上叶见一约9mm实性结节，Lung-RADS 4A。", 9.0),
        ("Right lower lobe nodule measuring 1.2 x 0.8 cm, Lung-RADS 4A.", 12.0),
        ("左肺上叶磨玻璃结节，大小约1.5×1.1cm，考虑肺癌可能。", 15.0),
    ],
)
def test_nodule_size_in_mm(text: str, size: float) -> None:
    assert EXTRACTOR.extract(text)["lung_nodule"].size_mm == size


# ------------------------------------------------------------------ sections, typos, evidence


def test_the_conclusion_wins_over_the_findings() -> None:
    text = "检查所见：胰头区见一低密度肿块。\n诊断意见：胰头癌。"
    result = EXTRACTOR.extract(text)["pancreatic_cancer"]
    assert result.value == 1
    assert result.span_text == "胰头癌"
    assert text[result.span_start : result.span_end] == "胰头癌"


def test_a_history_section_does_not_address_the_organ() -> None:
    text = "Clinical history: pancreatic cancer.\nImpression: no acute intracranial abnormality."
    assert label(text, "pancreatic_cancer") == -1


@pytest.mark.parametrize(
    ("text", "task"),
    [
        ("Impression: pancreatic adenocarcnoma.", "pancreatic_cancer"),
        ("Impression: multifocal hepatocelular carcinoma.", "liver_cancer"),
        ("Impression: pancretic carcinomma.", "pancreatic_cancer"),
    ],
)
def test_typos_still_match_and_lower_the_confidence(text: str, task: str) -> None:
    result = EXTRACTOR.extract(text)[task]
    assert result.value == 1
    assert "fuzzy" in result.rule
    assert result.confidence < 0.95
    assert text.lower()[result.span_start : result.span_end] == result.span_text.lower()


def test_abnormal_is_never_corrected_to_normal() -> None:
    assert EXTRACTOR.vocabulary.correct("abnormal") is None


def test_multi_finding_report_answers_every_task() -> None:
    labels = EXTRACTOR.extract(
        "诊断意见：1. 胰腺体尾部癌伴肝多发转移；2. 双肺多发结节，转移待排；3. 双乳未见异常。"
    )
    assert {name: labels[name].value for name in labels} == {
        "pancreatic_cancer": 1,
        "liver_cancer": 1,
        "lung_nodule": 2,
        "breast_cancer": 0,
    }


def test_every_label_carries_its_rule_and_confidence() -> None:
    labels = EXTRACTOR.extract("Impression: no evidence of pancreatic malignancy.")
    result = labels["pancreatic_cancer"]
    assert result.value == 0
    assert "negated by 'no evidence of'" in result.rule
    assert 0 < result.confidence <= 1
    assert labels["breast_cancer"].rule == "organ not mentioned"


def test_an_empty_report_is_refused() -> None:
    with pytest.raises(EmptyReportError):
        EXTRACTOR.extract("  \n ")


def test_the_baseline_has_no_negation() -> None:
    text = "No evidence of pancreatic cancer."
    assert FuzzyBaseline(TASKS).extract(text)["pancreatic_cancer"].value == 1
    assert label(text, "pancreatic_cancer") == 0


# ------------------------------------------------------------------ the task file


def test_the_shipped_task_file_defines_the_four_tasks_with_their_classes() -> None:
    assert list(TASKS.tasks) == [
        "pancreatic_cancer",
        "breast_cancer",
        "lung_nodule",
        "liver_cancer",
    ]
    for task in TASKS.tasks.values():
        assert set(task.meanings()) == {1, 0, 2, -1}
        assert all(task.meanings().values())
        assert task.precedence == ("pathology", "radiology")
    assert TASKS.version


def test_a_broken_task_file_is_refused_with_its_name(tmp_path) -> None:  # type: ignore[no-untyped-def]
    broken = tmp_path / "tasks.toml"
    broken.write_text(
        DEFAULT_TASKS_FILE.read_text(encoding="utf-8").replace(
            '[tasks.liver_cancer.classes.-1]\nmeaning = "the liver is not addressed"\n', ""
        ),
        encoding="utf-8",
    )
    with pytest.raises(TaskFileError, match=r"tasks\.toml"):
        load_tasks(broken)
    with pytest.raises(TaskFileError, match="does not exist"):
        load_tasks(tmp_path / "missing.toml")
