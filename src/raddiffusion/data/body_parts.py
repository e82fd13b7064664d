"""Which body part a DICOM image shows: the chest, as hospitals spell it.

One table, :data:`CHEST_TERMS`, decides. A BodyPartExamined value is the chest when, upper-cased with every
separator removed (``CHEST_PA``, ``Chest PA`` and ``chest-pa`` are all ``CHESTPA``), it is a term of the table or
of the site's own words (``--body-part``). An image without BodyPartExamined is the chest when a word of its study,
series, protocol or procedure description is such a term (``XR CHEST 2 VIEWS``, ``THORAX PA``; ``THORACIC SPINE``
is not).
"""
from __future__ import annotations

import re
from collections.abc import Iterable

CHEST_TERMS = (
    "CHEST", "THORAX", "LUNG", "LUNGS", "CXR",
    "PORT CHEST", "PORTABLE CHEST", "CHEST PORT", "CHEST PORTABLE",
    "CHEST PA", "CHEST AP", "CHEST LAT", "CHEST LATERAL", "CHEST PA LAT", "CHEST PA AND LAT", "CHEST 2 VIEWS",
    "THORAX PA", "THORAX AP", "THORAX LAT", "THORAX LATERAL",
    "TORAX", "TORACE", "THORAKS",  # Spanish / Portuguese, Italian, Scandinavian and Polish spellings
)
"""BodyPartExamined values (and description words) that mean a chest radiograph; case and separators ignored."""
DESCRIPTION_KEYWORDS = ("StudyDescription", "SeriesDescription", "ProtocolName", "PerformedProcedureStepDescription",
                        "RequestedProcedureDescription")
"""The header elements whose words may name the chest when BodyPartExamined is absent."""
SEPARATORS = re.compile(r"[^0-9A-Z]+")


def normalised(value: str) -> str:
    """``value`` upper-cased with every separator (space, ``_``, ``-``, ``/``, ...) removed."""
    return SEPARATORS.sub("", value.upper())


class ChestRule:
    """The chest terms of :data:`CHEST_TERMS` plus a site's ``extra`` words."""

    def __init__(self, extra: Iterable[str] = ()):
        extra = tuple(extra)
        if any(not normalised(word) for word in extra):
            raise ValueError("--body-part needs a word with a letter or a digit")
        self.terms = frozenset(normalised(term) for term in (*CHEST_TERMS, *extra))

    def is_chest(self, body_part: str) -> bool:
        """Whether a BodyPartExamined value names the chest."""
        return normalised(body_part) in self.terms

    def describes_chest(self, descriptions: Iterable[str]) -> bool:
        """Whether any word of the descriptions names the chest."""
        return any(word in self.terms for text in descriptions for word in SEPARATORS.split(text.upper()) if word)
