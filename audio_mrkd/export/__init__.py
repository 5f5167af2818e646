"""Export of trained runs: ONNX graphs (fp32, int8, waveform-in), complexity and parity reports, prediction."""

#: Accuracy points an int8 model may lose against fp32 on the evaluated split before ``export`` refuses it.
INT8_MAX_DROP_PT = 2.0
