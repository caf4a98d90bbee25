"""What each benchmark shows in TensorBoard: {benchmark: {chart tag: {setting run: figure key}}}.

The settings of one chart (the engine, its baseline, its limit) write the same tag, so
TensorBoard overlays them; each ratio has a chart of its own, in the run `ratios` (a ratio of
one setting to a reference: in that setting's run, so it keeps its colour). `{name}` in a
figure key matches a part of the key and fills the same `{name}` in the run (a line per value)
or the tag (a chart per value); exact keys are looked up first, then patterns in the order
written (benchmarks/tensorboard_runs.py).
The figure keys are those of each benchmark's report.add; the JSON keeps them as they are.
"""

from benchmarks.tensorboard_runs import ratio_charts

CHARTS = {
    # the converter beside its limits (its own decoder, 1 and N processes) and the plain PIL loop
    "convert": {
        "throughput/patches_per_s": {
            "engine": "convert_patches_per_s",
            "engine_1_worker": "convert_1_worker_patches_per_s",
            "decoder_1_process": "decode_single_process_patches_per_s",
            "decoder_{workers}_processes": "decode_{workers}_processes_patches_per_s",
            "plain_pil_1_process": "plain_pil_decode_single_process_patches_per_s"},
        "cold_input/patches_per_s": {
            "engine": "convert_cold_input_patches_per_s",
            "plain_pil_1_process": "plain_pil_decode_cold_input_patches_per_s"},
        **ratio_charts(
            "convert_vs_ideal_workers_x_decode", "convert_vs_ideal_median_of_paired_repeats",
            "convert_vs_parallel_decode", "convert_vs_workers_x_plain_pil",
            "convert_1_worker_vs_decode", "parallel_decode_vs_ideal",
            "convert_cold_vs_warm_input"),
        "workers": {"engine": "num_workers"},
    },
    # every pipeline and the image_dataset_from_directory baseline; the resident mode's memory
    # and seconds beside TensorFlow alone's
    "input_pipeline": {
        "throughput/images_per_s": {
            "engine": "engine_img_per_s", "engine_cache": "engine_cache_img_per_s",
            "device_resident": "device_resident_img_per_s",
            "engine_png_shards": "engine_png_img_per_s", "raw_read": "raw_read_img_per_s",
            "raw_read_sequential": "raw_read_sequential_img_per_s",
            "raw_read_parallel": "raw_read_parallel_img_per_s",
            "image_dataset_from_directory": "baseline_img_per_s"},
        "ratio/engine_vs_image_dataset_from_directory": {"ratios": "engine_vs_baseline"},
        **ratio_charts("engine_vs_raw_read", "cache_vs_engine", "device_resident_vs_engine",
                       "png_vs_raw_shards"),
        "resident/peak_mb": {"tensorflow_alone": "resident_tensorflow_floor_peak_mb",
                             "device_resident": "resident_sampler_peak_mb",
                             "device_resident_training": "resident_train_peak_mb",
                             "split_images": "resident_split_image_mb"},
        "resident/peak_above_tensorflow_vs_split": {
            "device_resident": "resident_sampler_peak_vs_split",
            "device_resident_training": "resident_train_peak_vs_split"},
        "resident/seconds_to_first_batch": {
            "device_resident": "resident_sampler_seconds_to_first_batch",
            "device_resident_training": "resident_train_seconds_to_first_step"},
        "resident/seconds_to_sampler": {
            "device_resident": "resident_sampler_seconds_to_sampler"},
        "resident/training_wall_seconds": {
            "device_resident_training": "resident_train_wall_seconds"},
        "resident/split_num_examples": {"split_images": "resident_split_num_examples"},
    },
    # every engine setting beside Keras fit (unfused: the graph of `engine_unfused`; fused: the
    # reference's); ratios as the median of per-round ratios and the ratio of medians
    "train_step": {
        "throughput/images_per_s": {
            "engine": "engine_img_per_s", "engine_{setting}": "engine_{setting}_img_per_s",
            "keras_fit": "keras_fit_img_per_s", "keras_fit_fused": "keras_fit_fused_img_per_s"},
        **{f"ratio/{key}": {"ratios": key, "ratios_of_medians": f"{key}_of_medians"}
           for key in ("engine_vs_fit_same_graph", "engine_vs_fit_fused", "fused_batchnorm_gain")},
        "ratio/setting_vs_reference": {"engine_{setting}": "engine_{setting}_vs_reference"},
        "ratio_of_medians/setting_vs_reference": {
            "engine_{setting}": "engine_{setting}_vs_reference_of_medians"},
        "input_alone/images_per_s": {"input_{mode}": "pipeline_{mode}_img_per_s"},
        "ratio/input_alone_vs_reference_step": {"input_{mode}": "headroom_{mode}"},
    },
    # the SavedModel beside the Keras model's two paths, per batch size
    "inference": {
        "throughput_batch_{batch}/images_per_s": {
            "saved_model": "saved_model_b{batch}_images_per_s",
            "keras_function": "keras_function_b{batch}_images_per_s",
            "keras_predict": "keras_predict_b{batch}_images_per_s",
            "litert_float": "litert_float_b{batch}_images_per_s",
            "int8": "int8_b{batch}_images_per_s",
            "int8_network": "int8_network_b{batch}_images_per_s"},
        "png_files/images_per_s": {"predict_files": "predict_files_png_b256_images_per_s",
                                   "png_decode_only": "png_decode_only_images_per_s"},
        "ratio/saved_model_vs_keras_function_batch_{batch}": {
            "ratios": "saved_model_vs_keras_function_b{batch}"},
        "ratio/{runtime}_vs_saved_model_batch_{batch}": {
            "ratios": "{runtime}_vs_saved_model_b{batch}"},
        "max_abs_diff_vs_keras": {"saved_model": "max_abs_diff_saved_model_vs_keras"},
        "max_abs_diff_int8_vs_saved_model": {"int8": "max_abs_diff_saved_model_vs_int8"},
    },
    # no TTA, the engine's D4 in one call, the naive 8 calls
    "tta": {
        "throughput/images_per_s": {"no_tta": "none_images_per_s",
                                    "d4_one_call": "d4_one_call_images_per_s",
                                    "d4_8_calls": "d4_8_calls_images_per_s"},
        **ratio_charts("cost_none_over_d4_one_call", "d4_one_call_over_8_calls"),
    },
    # per method the engine's paths beside torchstain's; the training step without and with it
    "stain": {
        "throughput_{method}/images_per_s": {
            "engine_graph": "engine_{method}_graph_img_per_s",
            "engine_xla": "engine_{method}_xla_img_per_s",
            "engine_xla_2_streams": "engine_{method}_xla_2_streams_img_per_s",
            "torchstain_numpy": "torchstain_numpy_{method}_img_per_s",
            "torchstain_tf": "torchstain_tf_{method}_img_per_s"},
        "training_step/images_per_s": {"training_step_{method}": "step_{method}_img_per_s"},
        # before the one-stream ratio, whose pattern would also take these keys
        "ratio/{method}_engine_2_streams_vs_fastest_torchstain": {
            "ratios": "engine_{method}_2_streams_vs_fastest_reference"},
        "ratio/{method}_engine_1_stream_vs_fastest_torchstain": {
            "ratios": "engine_{method}_vs_fastest_reference"},
        "ratio/training_step_vs_none": {"training_step_{method}": "step_{method}_vs_none"},
    },
    # a run per setting
    "stain_shift": {
        "roc_auc/test": {"{setting}": "{setting}_test_roc_auc"},
        "roc_auc/val": {"{setting}": "{setting}_val_roc_auc"},
    },
    # the engine's phases beside the plain read_region loop and the shared-cores ceiling
    "slide_inference": {
        "throughput/tiles_per_s": {
            "engine_end_to_end": "engine_end_to_end_tiles_per_s",
            "engine_streaming": "engine_streaming_tiles_per_s",
            "read_alone": "read_alone_tiles_per_s", "model_alone": "model_alone_tiles_per_s",
            "plain_read_region_loop": "plain_loop_tiles_per_s",
            "shared_cores_ceiling": "shared_cores_ceiling_tiles_per_s",
            "engine_end_to_end_int8": "engine_end_to_end_int8_tiles_per_s",
            "model_alone_int8": "model_alone_int8_tiles_per_s"},
        **ratio_charts(
            "end_to_end_vs_slower_of_read_and_model", "end_to_end_vs_plain_loop",
            "end_to_end_vs_shared_cores_ceiling",
            "shared_cores_ceiling_vs_slower_of_read_and_model", "model_alone_vs_plain_loop",
            "end_to_end_int8_vs_plain_loop", "end_to_end_int8_vs_savedmodel",
            "model_alone_int8_vs_savedmodel"),
        "memory/peak_rss_mb": {"engine_cli_{slide}": "peak_rss_mb_cli_{slide}"},
    },
    # a cohort of mixed sizes against one large slide of the same tiles; the per-slide fixed
    # cost by size class, with and without the slides' overlap; two shards against one process
    "cohort": {
        "throughput/tiles_per_s": {
            "cohort": "cohort_tiles_per_s", "cohort_no_overlap": "cohort_no_overlap_tiles_per_s",
            "large_slide": "large_slide_tiles_per_s", "two_shards": "two_shards_tiles_per_s"},
        **ratio_charts("cohort_vs_large_slide", "cohort_no_overlap_vs_large_slide",
                       "overlap_vs_no_overlap", "two_shards_vs_one_process"),
        "fixed_seconds_per_slide/{size}": {
            "cohort": "cohort_fixed_seconds_{size}",
            "cohort_no_overlap": "cohort_no_overlap_fixed_seconds_{size}"},
    },
    # the viewer's tile latency: each way of asking beside the generator alone (no HTTP)
    "viewer": {
        **{f"latency_ms/{stat}": {
            setting: f"{setting}_{stat}_ms" for setting in (
                "single_connection", "six_connections", "six_connections_viewports", "cached",
                "first_view_uncached", "first_view_cached", "deepzoom_alone")}
            for stat in ("p50", "p95")},
        "throughput/tiles_per_s": {
            "single_connection": "single_connection_tiles_per_s",
            "six_connections": "six_connections_tiles_per_s",
            "six_connections_viewports": "six_connections_viewports_tiles_per_s"},
        **ratio_charts("single_connection_p95_vs_target", "six_connections_p95_vs_target",
                       "six_connections_viewports_p95_vs_target", "cached_p95_vs_target"),
    },
    # float32 and mixed_bfloat16 on the same folds and seeds: each seed's pooled ROC-AUC, the
    # paired difference with its interval and the rule's verdict, the step rates
    "precision": {
        "roc_auc/seed_{seed}": {"{precision}": "pooled_auc_{precision}_seed{seed}"},
        "roc_auc_difference/second_minus_first_precision": {
            "seed_{seed}": "auc_difference_seed{seed}", "mean": "auc_difference_mean",
            "ci95_low": "auc_difference_ci95_low", "ci95_high": "auc_difference_ci95_high"},
        "non_inferior": {"decision": "non_inferior"},
        "throughput/train_images_per_s": {"{precision}": "train_images_per_s_{precision}"},
        "ratio/speed_{faster}_vs_{reference}": {"ratios": "speed_{faster}_vs_{reference}"},
    },
}
