"""Records and formats: any supported input layout -> canonical TRL conversational pairs.

result = convert_files([Path("test.jsonl.gz")], ConvertOptions(format="hh_rlhf"))
write_pairs(result, Path("pairs.parquet"))
"""

from orpo_pipeline.formats.convert import FORMATS, ConversionResult, convert_files, detect_format
from orpo_pipeline.formats.mapping import FieldMapping, load_mapping
from orpo_pipeline.formats.options import ConvertOptions
from orpo_pipeline.formats.writer import format_summary, write_pairs

__all__ = [
    "FORMATS",
    "ConversionResult",
    "ConvertOptions",
    "FieldMapping",
    "convert_files",
    "detect_format",
    "format_summary",
    "load_mapping",
    "write_pairs",
]
