"""idc_engine: a high-throughput TensorFlow engine for the IDC breast-histopathology patches.

Command lines (flags and main only; the work is in the stage folders, see docs/layout.md):
python -m idc_engine.{synthetic,convert,stain,train,crossval,evaluate,predict,explain,slide,view}.
"""

__version__ = "0.1.0"
