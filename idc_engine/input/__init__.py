"""Stage 2, TFRecords -> batches: the tf.data pipeline, the host cache, the device-resident
sampler and augmentation on the device. Imports idc_engine.data only."""
