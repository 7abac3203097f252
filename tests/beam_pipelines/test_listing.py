"""listing.py: ListImages as a stage (TestPipeline) and its DoFn called directly: batches of files, each file once
however the --input patterns overlap, listing problems carried as files, a Selector's verdicts counted."""

import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines import file_listing, listing


def _files(root, names) -> list[str]:
    paths = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        paths.append(str(path))
    return paths


def test_a_file_matched_by_several_patterns_is_listed_once(tmp_path):
    files = _files(tmp_path, ["cat/1.jpg", "cat/2.jpg", "dog/3.jpg", "dog/4.png", "5.jpg"])
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "nowhere")
    patterns = [str(tmp_path / "cat"), str(tmp_path / "**.jpg"), str(tmp_path), str(tmp_path / "cat" / "1.jpg")]

    with test_pipeline.TestPipeline() as pipeline:
        batches = pipeline | "ListImages" >> listing.ListImages(patterns, files_per_batch=2)
        paths = batches | "Paths" >> beam.FlatMap(lambda batch: [(ref.path, ref.problem) for ref in batch.files])
        listed = (batches
                  | "Listed" >> beam.Map(lambda batch: batch.counts[listing.LISTED])
                  | "Sum" >> beam.CombineGlobally(sum))
        sizes = batches | "Sizes" >> beam.Map(len) | "Largest" >> beam.CombineGlobally(max)
        broken = (str(tmp_path / "broken.jpg"), file_listing.BROKEN_SYMLINK)
        assert_that(paths, equal_to([(path, None) for path in files] + [broken]), label="CheckPaths")
        assert_that(listed, equal_to([len(files) + 1]), label="CheckListed")
        assert_that(sizes, equal_to([2]), label="CheckBatchSize")


class _SkipCats(listing.Selector):
    """Skips files under cat/ and notes each skipped name on the next batch."""

    def open(self):
        self._skipped = []

    def __call__(self, ref):
        if "/cat/" in ref.path:
            self._skipped.append(ref.path)
            return "skipped"
        return None

    def notes(self):
        notes, self._skipped = {"skipped": self._skipped}, []
        return notes


def test_batches_hold_at_most_files_per_batch_and_count_what_the_selector_set_aside(tmp_path):
    cats = _files(tmp_path, [f"cat/{i}.jpg" for i in range(3)])
    dogs = _files(tmp_path, [f"dog/{i}.jpg" for i in range(5)])
    fn = listing.ListBatchesFn([str(tmp_path)], files_per_batch=2, batch_prefix="p", select=_SkipCats())
    fn.setup()

    batches = list(fn.process((0, str(tmp_path))))

    assert [len(batch) for batch in batches] == [2, 2, 1]
    assert sorted(ref.path for batch in batches for ref in batch.files) == sorted(dogs)
    assert [batch.batch_id for batch in batches] == ["p-000-0000000", "p-000-0000001", "p-000-0000002"]
    assert sum(batch.counts[listing.LISTED] for batch in batches) == len(cats) + len(dogs)
    assert sum(batch.counts.get("skipped", 0) for batch in batches) == len(cats)
    assert sorted(path for batch in batches for path in batch.notes["skipped"]) == sorted(cats)


def test_a_pattern_with_nothing_to_do_still_reports_its_counts(tmp_path):
    _files(tmp_path, ["cat/1.jpg", "cat/2.jpg"])
    fn = listing.ListBatchesFn([str(tmp_path)], files_per_batch=10, batch_prefix="p", select=_SkipCats())
    fn.setup()
    [batch] = fn.process((0, str(tmp_path)))
    assert len(batch) == 0 and batch.counts == {listing.LISTED: 2, "skipped": 2}
