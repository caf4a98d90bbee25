"""Stage 2, TFRecords -> batches: the tf.data pipeline, the host cache, the device-resident
sampler and augmentation on the device. Imports idc_engine.data only.

    pipeline.py         make_dataset, make_device_resident_sampler, channel_mean_std: what others call
    shards.py           a split's shards checked against the manifest (split_source); ShardError,
                        explain_data_loss
    parsing.py          serialized records -> tensors (parse_batch, decode_images)
    record_batches.py   tf.data from the shards: chunked parsing, shuffling, batching
    host_cache.py       a split decoded into host memory (load_split_arrays) and batches from it
    packed_split.py     the resident layout (images as aligned int64 words) read from the shards
    permutation.py      the stateless per-element random permutation of the resident sampler
    device_resident.py  DeviceResidentSampler: the split in accelerator memory
    augment.py          augmentation ops and specs, run on the device inside the step
    stain.py            stain normalisation (Reinhard, Macenko) as batched, XLA-compilable ops
    stain_target.py     the stain target fitted from the train split (<data_dir>/stain_target.json)
"""
