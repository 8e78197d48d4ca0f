"""Model registry: the growing label space of continual model routing.

Every model id gets an integer label the first time the stream shows it, and labels are never
re-indexed, so a router can append one output row per new model and keep old rows in place.
The registry also stores each model's family, domain and model card, and gives families and
domains stable integer ids (in order of first appearance) for F-Acc and D-Acc.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cmrkit.data.records import parse_json_line, required_string

logger = logging.getLogger("cmrkit.data")

REGISTRY_FORMAT = "cmrkit-model-registry"
REGISTRY_FORMAT_VERSION = 1

CARD_FIELDS: tuple[str, ...] = ("description", "functionality", "api_call", "framework")
"""Model-card fields copied from the registry file's ``api_data``-like objects."""

ModelsAddedListener = Callable[["ModelRegistry", list[int], int], None]
"""Callback ``(registry, new_labels, experience)`` run by ``ModelRegistry.notify_added``."""


class UnknownModelError(KeyError):
    """A model id that the registry (or the registry file) does not contain.

    The message names the model id and, when the id comes from a data file, the file's relative
    path, the 1-based line and the field.
    """

    def __init__(
        self,
        model_id: str,
        *,
        relpath: str | None = None,
        line: int | None = None,
        field: str | None = None,
        known_from: str | None = None,
    ) -> None:
        message = f"unknown model id {model_id!r}"
        if known_from is not None:
            message += f": it is not in {known_from}"
        if relpath is not None:
            where = relpath if line is None else f"{relpath}, line {line}"
            if field is not None:
                where += f", field {field!r}"
            message = f"{where}: {message}"
        super().__init__(message)
        self.model_id = model_id
        self.relpath = relpath
        self.line = line
        self.field = field

    def __str__(self) -> str:
        # KeyError.__str__ would print the message with quotes around it.
        return str(self.args[0])


@dataclass
class ModelCard:
    """Everything the registry stores about one model id."""

    model_id: str
    label: int
    family: str
    """First family seen in the data."""
    domain: str
    """First domain seen in the data."""
    families: list[str] = field(default_factory=list)
    """Every family seen, first one first."""
    domains: list[str] = field(default_factory=list)
    """Every domain seen, first one first."""
    description: str = ""
    functionality: str = ""
    api_call: str = ""
    framework: str = ""
    experiences: list[int] = field(default_factory=list)
    """0-based experiences the model appears in, ascending."""

    def card_text(self) -> str:
        """Join model id, domain, functionality and description into one text, one per line.

        Empty parts are left out. Retrieval baselines and card-based row initialisation embed this.
        """
        parts = (self.model_id, self.domain, self.functionality, self.description)
        return "\n".join(part for part in parts if part.strip())


class ModelRegistry:
    """Label space of the model hub: model id to label, model cards, family and domain ids."""

    def __init__(self) -> None:
        self._cards: list[ModelCard] = []
        self._labels: dict[str, int] = {}
        self._family_ids: dict[str, int] = {}
        self._domain_ids: dict[str, int] = {}
        self._has_card: set[str] = set()
        self._ignored_cards = 0
        self._listeners: list[ModelsAddedListener] = []

    # Building

    def add(self, model_id: str, *, family: str, domain: str, experience: int) -> int:
        """Register one sighting of a model and return its label.

        A new model id gets the next free label. For a known id the call keeps the label and
        records any family, domain or experience not seen before, so it is idempotent.
        """
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f"invalid model id {model_id!r}: expected a non-empty string")
        if experience < 0:
            raise ValueError(f"invalid experience index {experience}: expected 0 or more")
        self._family_ids.setdefault(family, len(self._family_ids))
        self._domain_ids.setdefault(domain, len(self._domain_ids))

        label = self._labels.get(model_id)
        if label is None:
            label = len(self._cards)
            self._labels[model_id] = label
            self._cards.append(
                ModelCard(
                    model_id=model_id,
                    label=label,
                    family=family,
                    domain=domain,
                    families=[family],
                    domains=[domain],
                    experiences=[experience],
                )
            )
            return label

        card = self._cards[label]
        if family not in card.families:
            card.families.append(family)
        if domain not in card.domains:
            card.domains.append(domain)
        if experience not in card.experiences:
            card.experiences.append(experience)
            card.experiences.sort()
        return label

    def set_card(self, model_id: str, card: Mapping[str, Any]) -> None:
        """Fill the model-card fields of a registered model from an ``api_data``-like dict.

        The first card for a model wins. Later cards (upstream ships variants that differ in
        ``api_call``) are ignored and counted in ``ignored_cards``. Missing or null fields become
        empty strings and a list (one upstream card has a list of functionalities) is joined
        with ", ".

        Raises:
            UnknownModelError: ``model_id`` has no label yet.
        """
        entry = self.card(model_id)
        if model_id in self._has_card:
            self._ignored_cards += 1
            return
        for name in CARD_FIELDS:
            setattr(entry, name, _card_field_text(card.get(name)))
        self._has_card.add(model_id)

    @property
    def ignored_cards(self) -> int:
        """Number of ``set_card`` calls ignored because the model already had a card."""
        return self._ignored_cards

    # Lookup

    def label(self, model_id: str) -> int:
        """Return the label of a model id, or raise UnknownModelError if it has none."""
        label = self._labels.get(model_id)
        if label is None:
            raise UnknownModelError(model_id, known_from="the model registry")
        return label

    def model_id(self, label: int) -> str:
        """Return the model id of a label, or raise IndexError if the label is out of range."""
        return self._card_at(label).model_id

    def card(self, key: str | int) -> ModelCard:
        """Return the card of a model id or a label."""
        if isinstance(key, str):
            return self._cards[self.label(key)]
        return self._card_at(key)

    def _card_at(self, label: int) -> ModelCard:
        if not 0 <= label < len(self._cards):
            raise IndexError(f"invalid label {label}: the registry has labels 0 to {len(self) - 1}")
        return self._cards[label]

    def __len__(self) -> int:
        return len(self._cards)

    def __iter__(self) -> Iterator[ModelCard]:
        return iter(self._cards)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._labels

    def labels_in_experience(self, experience: int) -> list[int]:
        """Return the labels of every model that appears in an experience, new or recurring."""
        return [card.label for card in self._cards if experience in card.experiences]

    # Families and domains

    def family_ids(self) -> torch.Tensor:
        """Return a LongTensor ``[len(self)]`` with the family id of each label's first family."""
        return torch.tensor([self._family_ids[c.family] for c in self._cards], dtype=torch.long)

    def domain_ids(self) -> torch.Tensor:
        """Return a LongTensor ``[len(self)]`` with the domain id of each label's first domain."""
        return torch.tensor([self._domain_ids[c.domain] for c in self._cards], dtype=torch.long)

    def family_index(self, family: str) -> int:
        """Return the stable id of a family (in order of first appearance), or -1 if unknown."""
        return self._family_ids.get(family, -1)

    def domain_index(self, domain: str) -> int:
        """Return the stable id of a domain (in order of first appearance), or -1 if unknown.

        The id is not the position in the sorted ``domains`` list. Use ``domain_name`` to map
        an id back to its name.
        """
        return self._domain_ids.get(domain, -1)

    def family_name(self, index: int) -> str:
        """Return the family with a given id."""
        return _name_at(self._family_ids, index, "family")

    def domain_name(self, index: int) -> str:
        """Return the domain with a given id."""
        return _name_at(self._domain_ids, index, "domain")

    @property
    def domains(self) -> list[str]:
        """Distinct domains seen so far, sorted alphabetically."""
        return sorted(self._domain_ids)

    @property
    def families(self) -> list[str]:
        """Distinct families seen so far, sorted alphabetically."""
        return sorted(self._family_ids)

    # Listeners

    def add_listener(self, callback: ModelsAddedListener) -> None:
        """Register ``callback(registry, new_labels, experience)`` for ``notify_added``."""
        self._listeners.append(callback)

    def remove_listener(self, callback: ModelsAddedListener) -> None:
        """Unregister a callback added with ``add_listener``, or raise ValueError if absent."""
        self._listeners.remove(callback)

    def notify_added(self, new_labels: Sequence[int], experience: int) -> None:
        """Run every listener for the labels an experience added, in registration order."""
        for callback in list(self._listeners):
            callback(self, list(new_labels), experience)

    # Persistence

    def save(self, path: Path) -> None:
        """Write the registry as JSON (atomically, through a temporary file in the same folder).

        Listeners are not saved.
        """
        path = Path(path)
        document = {
            "format": REGISTRY_FORMAT,
            "version": REGISTRY_FORMAT_VERSION,
            "families": list(self._family_ids),
            "domains": list(self._domain_ids),
            "ignored_cards": self._ignored_cards,
            "models": [asdict(card) | {"has_card": card.model_id in self._has_card} for card in self],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(document, stream, ensure_ascii=False, indent=1)
            os.replace(temp_name, path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> ModelRegistry:
        """Read a registry written by ``save``.

        Raises:
            ValueError: The file is not a registry of this format and version, or its labels
                are not 0, 1, 2, ... in order.
        """
        path = Path(path)
        document = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(document, dict) or document.get("format") != REGISTRY_FORMAT:
            raise ValueError(f"{path} is not a cmrkit model registry (format {REGISTRY_FORMAT!r})")
        if document.get("version") != REGISTRY_FORMAT_VERSION:
            raise ValueError(
                f"{path}: unsupported registry version {document.get('version')!r}, "
                f"expected {REGISTRY_FORMAT_VERSION}"
            )

        registry = cls()
        registry._family_ids = {name: i for i, name in enumerate(document["families"])}
        registry._domain_ids = {name: i for i, name in enumerate(document["domains"])}
        registry._ignored_cards = int(document["ignored_cards"])
        for position, entry in enumerate(document["models"]):
            has_card = bool(entry.pop("has_card"))
            card = ModelCard(**entry)
            if card.label != position:
                raise ValueError(
                    f"{path}: model {card.model_id!r} has label {card.label}, expected {position}"
                )
            registry._cards.append(card)
            registry._labels[card.model_id] = card.label
            if has_card:
                registry._has_card.add(card.model_id)
        return registry


def _card_field_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def _name_at(ids: dict[str, int], index: int, kind: str) -> str:
    if not 0 <= index < len(ids):
        raise IndexError(f"invalid {kind} id {index}: expected 0 to {len(ids) - 1}")
    return list(ids)[index]


def read_model_cards(path: Path, *, relpath: str) -> dict[str, list[dict[str, Any]]]:
    """Read a registry file (JSON Lines of ``api_data``-like model cards) grouped by model id.

    Returns every card of each ``model_name`` in file order, and the model ids in order of
    first appearance.

    Raises:
        DataFormatError: A line is not a JSON object or lacks a non-empty string ``model_name``.
    """
    cards: dict[str, list[dict[str, Any]]] = {}
    entries = 0
    blank_lines = 0
    with Path(path).open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            obj = parse_json_line(raw, relpath=relpath, line=line_number)
            if obj is None:
                blank_lines += 1
                continue
            model_id = required_string(obj, "model_name", relpath=relpath, line=line_number)
            cards.setdefault(model_id, []).append(obj)
            entries += 1

    level = logging.INFO if blank_lines else logging.DEBUG
    logger.log(
        level,
        "read %d model cards for %d model ids from %s (%d blank lines skipped)",
        entries,
        len(cards),
        relpath,
        blank_lines,
    )
    return cards
