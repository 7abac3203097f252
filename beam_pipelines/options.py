"""Command-line options of the two Beam pipelines: one PipelineOptions subclass per pipeline.

Beam's own flags (--runner, --project, --region, --temp_location, --setup_file, --num_workers,
--direct_running_mode, --dask_client_address, ...) are not re-declared here: they pass through.
"""

from apache_beam.options.pipeline_options import PipelineOptions


class PreprocessOptions(PipelineOptions):
    """Flags of `python -m beam_pipelines.preprocess` (see its --help)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("catsdogs preprocessing")
        group.add_argument("--input", action="append", required=True,
                           help="folder or glob, local or gs://, read recursively; repeat for several")
        group.add_argument("--output_dir", required=True, help="where TFRecord shards and metadata.json go")


class ScoreOptions(PipelineOptions):
    """Flags of `python -m beam_pipelines.score` (see its --help)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        group = parser.add_argument_group("catsdogs scoring")
        group.add_argument("--model", required=True,
                           help="export version directory, or an export root whose `latest` names one")
        group.add_argument("--input", action="append", required=True,
                           help="folder or glob of images, local or gs://, read recursively; repeat for several")
        group.add_argument("--output_dir", required=True, help="runs are written to <output_dir>/<run_id>/")
