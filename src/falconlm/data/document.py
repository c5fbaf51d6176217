"""The unit of work of the data pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Document:
    """One web page or corpus record: a stable id, its text, its URL and free-form metadata."""

    id: str
    text: str
    url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable form written by the writers."""
        return {"id": self.id, "text": self.text, "url": self.url, "metadata": self.metadata}

    @classmethod
    def from_dict(cls, record: dict[str, Any], text_key: str = "text", id_key: str = "id") -> "Document":
        """Build a document from a JSON record; unknown keys go to metadata."""
        known = {text_key, id_key, "url", "metadata"}
        metadata = dict(record.get("metadata") or {})
        metadata.update({k: v for k, v in record.items() if k not in known})
        return cls(
            id=str(record.get(id_key, "")),
            text=record[text_key],
            url=record.get("url"),
            metadata=metadata,
        )
