"""Load a source into the vector store: read → items → embed → write.

Everything is embedded before anything is written, and the write is one all-or-nothing write of the
store (`VectorStore.begin(site)` … `commit()`): the new items, and the end of the items they replace,
become visible at one instant, so an ingest that is interrupted — Ctrl-C, an error, even `kill -9` —
leaves the site as it was or fully updated, never half-written. Ctrl-C during the write phase is
held until the commit is done.
What gets embedded is `core.item_text.item_text` of each item (the trimmed, type-aware reading),
never the raw JSON. Re-loading a URL replaces its item (the store keys by URL).

A url belongs to one site, so loading a url that another site holds would move it out of that site;
that is refused (`SiteConflictError`, naming the site and its nearest name) unless `confirm_move`
says yes: a mistyped `--site` must not quietly empty the real one. Deleting a site that does not
exist is an error listing the sites that do.
"""
from __future__ import annotations

import difflib
import os
import sys
import time
from array import array
from dataclasses import dataclass, field
from typing import Callable, Sequence

from tqdm import tqdm

from ..config.settings import IngestSettings
from ..core.errors import NotFoundError, SiteConflictError, SourceError
from ..core.item_text import item_text
from ..core.types import Item
from ..retrieval.base import Embedder, VectorStore
from .fetch import Fetcher
from .interrupt import DeferredInterrupt
from .items import build_items
from .sources import SourceReader

_SUMMARY_PROBLEMS = 10
# Test-only: after this many staged batches, say so on stderr and wait (to be killed). Unset in normal use.
# (Not NLWEB_LOCAL_*: that prefix is read as settings.)
TEST_HOLD_ENV = "NLWEB_TEST_HOLD_WRITE_AFTER_BATCHES"
TEST_HOLD_LINE = "nlweb-local test hook: holding the write"


@dataclass(slots=True)
class IngestReport:
    source: str
    site: str
    loaded: int = 0
    replaced: int = 0  # of `loaded`, how many urls were already in this site
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (where, reason)
    seconds: float = 0.0
    moved: dict[str, int] = field(default_factory=dict)  # of `loaded`, how many came out of each other site

    def summary(self) -> str:
        moved = "".join(f", {n} moved from site {s!r}" for s, n in sorted(self.moved.items()))
        new = self.loaded - self.replaced - sum(self.moved.values())
        lines = [f"loaded {self.loaded} items into site {self.site!r} from {self.source} in {self.seconds:.1f} s "
                 f"({new} new, {self.replaced} replaced{moved}, {len(self.skipped)} skipped)"]
        for where, reason in self.skipped[:_SUMMARY_PROBLEMS]:
            lines.append(f"  skipped {where}: {reason}")
        if len(self.skipped) > _SUMMARY_PROBLEMS:
            lines.append(f"  ... and {len(self.skipped) - _SUMMARY_PROBLEMS} more")
        return "\n".join(lines)


class Ingestor:
    def __init__(self, embedder: Embedder, store: VectorStore, settings: IngestSettings, *,
                 progress: bool = True, fetcher: Fetcher | None = None):
        self._embedder = embedder
        self._store = store
        self._batch = settings.batch_size
        self._reader = SourceReader(settings, fetcher=fetcher)
        self._progress = progress

    def ingest(self, source: str, site: str, *, fmt: str | None = None, default_type: str = "Thing",
               confirm_move: Callable[[str], bool] | None = None) -> IngestReport:
        """Load `source` (a file path or an http(s) URL) into `site`. `fmt` forces a format
        (see `detect.FORMATS`); `default_type` is the @type of CSV rows that name none. Items whose url
        another site holds are moved only when `confirm_move(question)` answers True (None: refused,
        `SiteConflictError`), before anything is embedded."""
        if not site or not site.strip():
            raise SourceError(f"no site name given for {source}; name the site the items belong to")
        started = time.monotonic()
        parsed = self._reader.read(source, fmt=fmt, default_type=default_type)
        items, problems = build_items(parsed.records, site)
        skipped = [p.as_tuple() for p in parsed.problems + problems]
        if not items:
            first = "; ".join(f"{w}: {r}" for w, r in skipped[:3])
            raise SourceError(f"{source} holds no loadable schema.org items" + (f" ({first})" if first else ""))
        owners = self._owners(items)
        moved: dict[str, int] = {}
        for owner in owners.values():
            if owner != site:
                moved[owner] = moved.get(owner, 0) + 1
        if moved:
            question = self._move_question(site, moved)
            if confirm_move is None or not confirm_move(question):
                raise SiteConflictError(question + " Nothing was loaded. To move them, run again with --force.")
        replaced = len(owners) - sum(moved.values())
        vectors = self._embed(items, site)
        self._write(items, vectors, site)
        return IngestReport(source=source, site=site, loaded=len(items), replaced=replaced, skipped=skipped,
                            seconds=time.monotonic() - started, moved=moved)

    def delete_site(self, site: str) -> int:
        """Remove every item of `site`; returns how many were removed. A site that is not in the store is
        `NotFoundError` naming the sites that are (a mistyped name must not look like a success)."""
        known = [s.name for s in self._store.sites()]
        if site not in known:
            raise NotFoundError(f"there is no site {site!r} to delete{_did_you_mean(site, known)}; "
                                f"the sites are: {', '.join(known) or '(none)'}")
        return self._store.delete_site(site)

    def _move_question(self, site: str, moved: dict[str, int]) -> str:
        where = ", ".join(f"{n} in site {s!r}" for s, n in sorted(moved.items()))
        known = [s.name for s in self._store.sites()]
        target = f"site {site!r}" if site in known else f"the new site {site!r}"
        return (f"{sum(moved.values())} of these items are already loaded ({where}); a url belongs to one site, so "
                f"loading them into {target} would move them out of it{_did_you_mean(site, list(moved))}.")

    def _batches(self, items: Sequence[Item]):
        for start in range(0, len(items), self._batch):
            yield start, items[start:start + self._batch]

    def _owners(self, items: Sequence[Item]) -> dict[str, str]:
        """url -> the site it is in now, for the items already in the store."""
        out: dict[str, str] = {}
        for _, batch in self._batches(items):
            out.update(self._store.url_sites([it.url for it in batch]))
        return out

    def _embed(self, items: Sequence[Item], site: str) -> list[array]:
        vectors: list[array] = []
        with tqdm(total=len(items), desc=f"embedding {site}", unit="item", file=sys.stderr,
                  disable=not self._progress, leave=False) as bar:
            for _, batch in self._batches(items):
                texts = [item_text(it.schema_object) for it in batch]
                vectors.extend(array("f", v) for v in self._embedder.embed(texts))
                bar.update(len(batch))
        return vectors

    def _write(self, items: Sequence[Item], vectors: Sequence[array], site: str) -> None:
        with DeferredInterrupt(), tqdm(total=len(items), desc=f"writing {site}", unit="item", file=sys.stderr,
                                       disable=not self._progress, leave=False) as bar, self._store.begin(site) as write:
            for n, (start, batch) in enumerate(self._batches(items), start=1):
                write.write(batch, vectors[start:start + len(batch)])
                bar.update(len(batch))
                _test_hold(site, n)
            write.commit()


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _test_hold(site: str, batches: int) -> None:
    """The kill-during-ingest test's hook: off unless `NLWEB_TEST_HOLD_WRITE_AFTER_BATCHES` is set."""
    hold = os.environ.get(TEST_HOLD_ENV)
    if hold and hold.isdigit() and int(hold) == batches:
        print(f"{TEST_HOLD_LINE} of site {site!r} after {batches} batches", file=sys.stderr, flush=True)
        time.sleep(120)
