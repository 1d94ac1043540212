"""Settings of research exports (section ``[export]``)."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator, model_validator


class SequenceFamily(BaseModel):
    """A named kind of series (an MR sequence or a CT contrast phase) and how scanners name it.

    A series belongs to the family whose synonym matches its description, protocol name or
    sequence name best (see ``export.sequences``); a longer matching synonym wins over a
    shorter one, so ``"t1 post"`` makes a series T1C rather than T1.
    """

    name: str = Field(min_length=1, max_length=32)
    synonyms: list[str] = Field(min_length=1)


def _families(*pairs: tuple[str, list[str]]) -> list[SequenceFamily]:
    return [SequenceFamily(name=name, synonyms=synonyms) for name, synonyms in pairs]


DEFAULT_SEQUENCES = _families(
    ("DWI", ["dwi", "diffusion", "ep2d diff", "trace", "b1000", "b800", "resolve"]),
    ("ADC", ["adc", "apparent diffusion"]),
    ("T1", ["t1", "t1w", "t1 weighted", "mprage", "spgr", "tfl3d", "t1 se", "t1 tse"]),
    ("T1C", ["t1 post", "t1 gd", "t1 c", "t1 contrast", "t1 ce", "mprage gd", "post gd"]),
    ("T2", ["t2", "t2w", "t2 weighted", "t2 tse", "haste", "t2 fse"]),
    ("FLAIR", ["flair", "t2 flair", "tirm", "dark fluid"]),
    ("non-contrast", ["non contrast", "noncontrast", "native", "plain", "w o contrast"]),
    ("arterial", ["arterial", "art", "late arterial", "hepatic arterial"]),
    ("portal venous", ["portal venous", "portal", "pv", "venous"]),
    ("delayed", ["delayed", "equilibrium", "late phase"]),
)


class ExportSettings(BaseModel):
    """Cohorts and exports: sequence names, reproducibility defaults, image rendering."""

    sequences: list[SequenceFamily] = Field(
        default_factory=lambda: [f.model_copy() for f in DEFAULT_SEQUENCES],
        description="Sequence/phase families and the synonyms scanners use for them.",
    )
    sequence_match_threshold: float = Field(
        default=85.0,
        ge=50.0,
        le=100.0,
        description="rapidfuzz ratio (0-100) a word of the series name must reach to match.",
    )
    default_seed: int = Field(
        default=0, ge=0, description="Seed of balancing and splits when unset."
    )
    default_split: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.7, "validation": 0.15, "test": 0.15},
        description="Split names and fractions used when a cohort asks for a split.",
    )
    png_windows: dict[str, list[float]] = Field(
        default_factory=lambda: {"CT": [40.0, 400.0]},
        description=(
            "Window [center, width] per modality for PNG slices that carry no window of "
            "their own; other modalities are scaled between png_percentiles."
        ),
    )
    png_percentiles: list[float] = Field(
        default_factory=lambda: [0.5, 99.5],
        description="Low and high percentile mapped to black and white without a window.",
    )
    nifti_compress: bool = Field(default=True, description="Write .nii.gz (gzip) instead of .nii.")
    age_bin_years: int = Field(
        default=10, ge=1, description="Width of the preview's age histogram bins."
    )

    @field_validator("default_split")
    @classmethod
    def _check_split(cls, value: dict[str, float]) -> dict[str, float]:
        if not value or any(f < 0 for f in value.values()):
            raise ValueError("default_split needs split names with fractions >= 0")
        if abs(sum(value.values()) - 1.0) > 1e-6:
            raise ValueError("default_split fractions must add up to 1")
        return value

    @field_validator("png_windows")
    @classmethod
    def _check_windows(cls, value: dict[str, list[float]]) -> dict[str, list[float]]:
        for modality, window in value.items():
            if len(window) != 2 or window[1] <= 0:
                raise ValueError(f"png_windows.{modality} must be [center, width > 0]")
        return value

    @model_validator(mode="after")
    def _check_percentiles(self) -> ExportSettings:
        low_high = self.png_percentiles
        if len(low_high) != 2 or not 0 <= low_high[0] < low_high[1] <= 100:
            raise ValueError("png_percentiles must be [low, high] with 0 <= low < high <= 100")
        names = [family.name for family in self.sequences]
        if len(set(names)) != len(names):
            raise ValueError("export.sequences has two families with the same name")
        return self
