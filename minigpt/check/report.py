"""What `minigpt.check` tells a learner: one line per property, then the diagnosis.

    minigpt.check: attention kernel `my_attention`
      ok    keeps the shape (b h t d) and the dtype
      FAIL  a query never sees a later key: the output at query 0 changed when key 1 changed (b=1 h=1 t=2)
      ...
    diagnosis: queries see the future: the scores are never masked with `allowed`
      read: notebooks/3-by-hand.ipynb, 'Attention of block 0, by hand'
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .causes import CAUSES


@dataclass
class Finding:
    name: str  # the property, as a sentence a learner reads
    failure: str | None = None  # None: it holds; else the smallest failing example, in words
    cause: str | None = None  # on failure: the key in causes.CAUSES this symptom points at
    skipped: str | None = None  # why it was not checked

    @property
    def passed(self) -> bool:
        return self.failure is None


@dataclass
class Report:
    kind: str
    piece: str
    findings: list[Finding] = field(default_factory=list)
    probe: str | None = None  # the wrong idea whose probe computes what the piece computes
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(finding.passed for finding in self.findings)

    @property
    def causes(self) -> list[str]:
        """The causes: a matching probe's alone (it accounts for every failure), or else each failing
        property's, once each, in the order of the properties."""
        if self.probe:
            return [self.probe]
        return list(dict.fromkeys(f.cause for f in self.findings if not f.passed and f.cause))

    def __str__(self) -> str:
        lines = [f"minigpt.check: {self.kind} `{self.piece}` ({self.seconds:.1f} s)"]
        for finding in self.findings:
            if finding.skipped:
                lines.append(f"  skip  {finding.name}: {finding.skipped}")
            else:
                lines.append(f"  {'ok  ' if finding.passed else 'FAIL'}  {finding.name}"
                             + ("" if finding.passed else f": {finding.failure}"))
        if self.passed:
            lines.append(f"every property holds: this {self.kind} computes what the reference computes")
            return "\n".join(lines)
        for rank, key in enumerate(self.causes):
            cause = CAUSES[key]
            how = " (its output is the reference's with exactly this changed)" if key == self.probe else ""
            lines.append(f"{'diagnosis' if rank == 0 else 'also'}: {cause.says}{how}")
            lines.append(f"  read: {cause.read}")
        return "\n".join(lines)
