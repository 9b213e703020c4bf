"""Prompts for the swap: the user's, or one built from image analysis plus a seeded identity.

An automatic prompt describes who stands in the photo now (apparent sex and
age from face analysis, the framing from the parse) and draws a new identity
from the seed: skin tone and ethnicity, hair colour and style, age band. The
same seed always draws the same person; different seeds draw different people.
With a face reference the skin tone is measured on the reference face, so the
regenerated body agrees with the face that will be put on it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import cv2
import numpy as np

SKIN_TONES = ("very fair", "fair", "light olive", "olive", "tan", "brown", "deep brown", "dark")
# Ethnicities that plausibly go with each skin tone (a draw, not a rule: people vary).
_ETHNICITY_BY_TONE = {
    "very fair": ("Scandinavian", "Irish", "Eastern European"),
    "fair": ("Northern European", "East Asian", "Slavic"),
    "light olive": ("Mediterranean", "East Asian", "Latina", "Middle Eastern"),
    "olive": ("Latina", "Middle Eastern", "Southeast Asian", "South European"),
    "tan": ("Latina", "South Asian", "Southeast Asian", "North African"),
    "brown": ("South Asian", "mixed-race", "Latina", "Pacific Islander"),
    "deep brown": ("African", "Afro-Caribbean", "South Asian"),
    "dark": ("West African", "East African", "African"),
}
HAIR_COLOURS = ("black", "dark brown", "chestnut brown", "light brown", "honey blonde", "platinum blonde",
                "auburn", "copper red", "ash brown", "jet black")
PERSONS = ("auto", "woman", "man")  # the `person` setting: auto = what face analysis says, else a neutral person
HAIR_STYLES = {
    "female": ("long straight", "long wavy", "shoulder-length", "sleek ponytail", "curly", "short bob",
               "loose braids", "low bun", "pixie-cut", "voluminous afro"),
    "male": ("short cropped", "textured quiff", "buzz-cut", "slicked-back", "curly", "medium-length wavy",
             "short afro", "side-parted", "tousled", "man-bun"),
    "person": ("shoulder-length", "curly", "short cropped", "medium-length wavy", "tousled", "short afro",
               "sleek", "wavy", "close-cropped", "layered"),
}
AGE_BANDS = ("early twenties", "mid twenties", "late twenties", "thirties", "early forties")
NEGATIVE_PROMPT = (
    "deformed face, distorted features, asymmetric eyes, extra fingers, fused fingers, bad hands, "
    "bad anatomy, blurry, lowres, jpeg artifacts, cartoon, painting, illustration, 3d render, "
    "plastic skin, watermark, text, logo"
)


@dataclass(frozen=True)
class Identity:
    sex: str  # "female" | "male" | "person" (unknown: described without guessing)
    age_band: str
    skin_tone: str
    ethnicity: str
    hair_colour: str
    hair_style: str

    def describe(self) -> str:
        noun, pronoun = {"female": ("woman", "her"), "male": ("man", "his")}.get(self.sex, ("person", "their"))
        return (f"a {self.ethnicity} {noun} in {pronoun} {self.age_band} with {self.skin_tone} skin "
                f"and {self.hair_colour} {self.hair_style} hair")


def age_band_for(age: float | None) -> str | None:
    if age is None:
        return None
    if age < 23:
        return AGE_BANDS[0]
    if age < 27:
        return AGE_BANDS[1]
    if age < 30:
        return AGE_BANDS[2]
    if age < 40:
        return AGE_BANDS[3]
    return AGE_BANDS[4]


def random_identity(seed: int, *, sex: str | None = None, age: float | None = None,
                    skin_tone: str | None = None) -> Identity:
    """Draw a new person from ``seed``. Known facts (sex, apparent age, a reference's
    skin tone) are kept; everything else is drawn. An unknown sex is not guessed: the person is
    described neutrally."""
    rng = random.Random(f"model-swap-identity:{seed}")
    rng.choice(("female", "male"))  # kept so a seed draws the same person as before this setting
    sex = sex if sex in ("female", "male") else "person"
    tone = rng.choice(SKIN_TONES)
    tone = skin_tone if skin_tone in SKIN_TONES else tone
    band = rng.choice(AGE_BANDS)
    band = age_band_for(age) or band
    ethnicity = rng.choice(_ETHNICITY_BY_TONE[tone])
    hair_colour = rng.choice(HAIR_COLOURS)
    if tone in ("deep brown", "dark", "brown") and hair_colour in ("platinum blonde", "honey blonde"):
        hair_colour = rng.choice(("black", "dark brown", "jet black", "honey blonde"))
    hair_style = rng.choice(HAIR_STYLES[sex])
    return Identity(sex, band, tone, ethnicity, hair_colour, hair_style)


def skin_tone_of(image: np.ndarray, kps: np.ndarray) -> str:
    """Classify the skin tone of a face from its cheeks, using the Individual Typology Angle.

    ``kps`` are the 5 insightface keypoints (eyes, nose, mouth corners) in image
    pixels. ITA = atan((L* - 50) / b*) in degrees, on the CIELAB colour of the
    cheek patches between the eyes and the mouth corners.
    """
    kps = np.asarray(kps, dtype=np.float32)
    eye_dist = float(np.linalg.norm(kps[1] - kps[0])) or 1.0
    r = max(2, int(round(eye_dist * 0.15)))
    samples = []
    for eye, mouth in ((kps[0], kps[3]), (kps[1], kps[4])):
        cx, cy = (eye * 0.45 + mouth * 0.55)
        x0, x1 = int(max(0, cx - r)), int(min(image.shape[1], cx + r + 1))
        y0, y1 = int(max(0, cy - r)), int(min(image.shape[0], cy + r + 1))
        if x1 > x0 and y1 > y0:
            samples.append(image[y0:y1, x0:x1].reshape(-1, 3))
    if not samples:
        return SKIN_TONES[3]
    rgb = np.median(np.concatenate(samples), axis=0).astype(np.uint8).reshape(1, 1, 3)
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)[0, 0].astype(np.float32)
    lightness, b = lab[0] * 100.0 / 255.0, lab[2] - 128.0
    ita = math.degrees(math.atan2(lightness - 50.0, max(b, 1e-3)))
    thresholds = (60, 50, 41, 33, 24, 10, -20)  # ITA, light to dark
    for tone, limit in zip(SKIN_TONES, thresholds):
        if ita > limit:
            return tone
    return SKIN_TONES[-1]


def framing_of(labels: np.ndarray | None) -> str:
    """'full-body shot', 'three-quarter shot', 'upper-body shot' or 'close-up portrait' from the parse."""
    if labels is None:
        return "fashion photo"
    counts = np.bincount(labels.ravel(), minlength=18)
    total = labels.size
    if counts[15] > 0.0005 * total:  # feet
        return "full-body shot"
    if counts[14] > 0.002 * total or counts[6] + counts[5] > 0.05 * total:  # legs, or pants/skirt
        return "three-quarter shot"
    if counts[1] > 0.12 * total:  # face fills the frame
        return "close-up portrait"
    return "upper-body shot"


def build_prompt(identity: Identity, framing: str) -> str:
    return (f"professional fashion photograph, {framing} of {identity.describe()}, "
            "natural skin texture, detailed face, photorealistic, sharp focus, studio quality")


def prompts_for(seeds: list[int], *, user_prompt: str = "", framing: str = "fashion photo",
                sex: str | None = None, age: float | None = None, reference_skin_tone: str | None = None,
                person: str = "auto") -> tuple[list[str], list[Identity | None]]:
    """One prompt per output image (image i uses seeds[i]).

    A user prompt is used as given; with a face reference its measured skin tone
    is appended unless the user already describes skin. ``person`` (one of PERSONS) overrides
    the analysed sex; with "auto" and no sex from analysis (e.g. a face analyser without an
    age/sex model) the automatic prompt describes a person without guessing.
    """
    if person in ("woman", "man"):
        sex = "female" if person == "woman" else "male"
    user_prompt = (user_prompt or "").strip()
    if user_prompt:
        text = user_prompt
        if reference_skin_tone and "skin" not in user_prompt.lower():
            text = f"{user_prompt}, {reference_skin_tone} skin"
        return [text] * len(seeds), [None] * len(seeds)
    people = [random_identity(s, sex=sex, age=age, skin_tone=reference_skin_tone) for s in seeds]
    return [build_prompt(p, framing) for p in people], people
