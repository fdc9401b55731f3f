"""The pure load-snapshot parsers, on metrics text shaped like each engine's real exposition."""
import math

from nlweb_local.providers.base import LoadSnapshot, PromptCacheCounters
from nlweb_local.providers.load_parsers import (llama_server_snapshot, ollama_canonical, ollama_snapshot, parse_prometheus,
                                                tgi_snapshot, vllm_snapshot)

from fakes.openai_fake import LLAMA_SERVER_METRICS  # llama-server --metrics, as the fake serves it

VLLM_METRICS = """\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12345.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 5.0
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.4375
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 0.0625
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 8192.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.04",model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.8812
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} NaN
"""

VLLM_OLD_METRICS = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="facebook/opt-125m"} 2.0
# HELP vllm:num_requests_swapped Number of requests swapped to CPU.
# TYPE vllm:num_requests_swapped gauge
vllm:num_requests_swapped{model_name="facebook/opt-125m"} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="facebook/opt-125m"} 4.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="facebook/opt-125m"} 0.91
"""

TGI_METRICS = """\
# TYPE tgi_request_count counter
tgi_request_count 1043
# TYPE tgi_request_success counter
tgi_request_success 1040
# TYPE tgi_request_failure counter
tgi_request_failure{err="validation"} 3
# TYPE tgi_queue_size gauge
tgi_queue_size 6
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 32
# TYPE tgi_batch_current_max_tokens gauge
tgi_batch_current_max_tokens 16000
# TYPE tgi_request_duration histogram
tgi_request_duration_bucket{le="0.5"} 120
tgi_request_duration_bucket{le="1"} 900
tgi_request_duration_bucket{le="+Inf"} 1040
tgi_request_duration_sum 812.5
tgi_request_duration_count 1040
# TYPE tgi_request_queue_duration histogram
tgi_request_queue_duration_bucket{le="0.01"} 1000
tgi_request_queue_duration_bucket{le="+Inf"} 1040
tgi_request_queue_duration_sum 3.2
tgi_request_queue_duration_count 1040
# TYPE tgi_batch_inference_duration histogram
tgi_batch_inference_duration_bucket{method="prefill",le="0.005"} 10
tgi_batch_inference_duration_sum{method="decode"} 400.1
"""


# -- the Prometheus text parser ---------------------------------------------------------------------

def test_prometheus_skips_comments_and_reads_labels_and_values():
    s = parse_prometheus(VLLM_METRICS)
    assert "# HELP" not in "".join(s)
    running = s["vllm:num_requests_running"]
    assert ({"engine": "0", "model_name": "meta-llama/Llama-3.1-8B-Instruct"}, 3.0) in running
    assert len(running) == 2
    assert s["python_gc_objects_collected_total"] == [({"generation": "0"}, 12345.0)]


def test_prometheus_histograms_keep_bucket_sum_and_count_apart():
    s = parse_prometheus(TGI_METRICS)
    buckets = s["tgi_request_duration_bucket"]
    assert [b[0]["le"] for b in buckets] == ["0.5", "1", "+Inf"]
    assert s["tgi_request_duration_sum"] == [({}, 812.5)]
    assert s["tgi_request_duration_count"] == [({}, 1040.0)]
    assert s["tgi_batch_inference_duration_bucket"][0][0] == {"method": "prefill", "le": "0.005"}


def test_prometheus_special_values_escapes_and_timestamps():
    text = ('m_inf{le="+Inf"} +Inf\n'
            "m_neg -Inf\n"
            "m_nan NaN\n"
            'm_esc{path="C:\\\\dir",quote="say \\"hi\\"",nl="a\\nb",comma="x,y}"} 1.5e3 1712345678000\n'
            "m_spaces{ a = \"1\" , b=\"2\", } 2\n"
            "not a metric line at all !!\n"
            "m_bad{unterminated=\"x} 3\n"
            "m_novalue\n")
    s = parse_prometheus(text)
    assert s["m_inf"][0][1] == math.inf and s["m_neg"][0][1] == -math.inf
    assert math.isnan(s["m_nan"][0][1])
    labels, value = s["m_esc"][0]
    assert labels == {"path": "C:\\dir", "quote": 'say "hi"', "nl": "a\nb", "comma": "x,y}"} and value == 1500.0
    assert s["m_spaces"] == [({"a": "1", "b": "2"}, 2.0)]
    assert "m_bad" not in s and "m_novalue" not in s and "not" not in s


def test_prometheus_empty_text():
    assert parse_prometheus("") == {} and parse_prometheus(None) == {}


# -- vLLM ---------------------------------------------------------------------------------------------

def test_vllm_sums_all_models_without_a_filter():
    snap = vllm_snapshot(VLLM_METRICS)
    assert isinstance(snap, LoadSnapshot) and snap.healthy
    assert (snap.running, snap.waiting) == (4, 5)
    assert snap.kv_cache_usage == 0.4375


def test_vllm_filters_by_model_name():
    snap = vllm_snapshot(VLLM_METRICS, model="Qwen/Qwen2.5-0.5B-Instruct")
    assert (snap.running, snap.waiting, snap.kv_cache_usage) == (1, 0, 0.0625)


def test_vllm_older_gpu_cache_metric():
    snap = vllm_snapshot(VLLM_OLD_METRICS, model="facebook/opt-125m")
    assert snap.healthy and (snap.running, snap.waiting) == (2, 4) and snap.kv_cache_usage == 0.91


def test_vllm_model_not_served_is_unhealthy_and_says_what_is():
    snap = vllm_snapshot(VLLM_OLD_METRICS, model="other/model")
    assert not snap.healthy and "facebook/opt-125m" in snap.detail


def test_vllm_no_metrics():
    assert not vllm_snapshot("").healthy


# vLLM V1 with --enable-prefix-caching: counters in tokens (prometheus_client adds the _created samples)
VLLM_PREFIX_CACHE_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 1.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 0.0
vllm:num_requests_waiting{engine="1",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 0.0
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 12000.0
vllm:prefix_cache_queries_total{engine="1",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 4000.0
# HELP vllm:prefix_cache_queries_created Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_created gauge
vllm:prefix_cache_queries_created{engine="0",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 1.7325e+09
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 9024.0
vllm:prefix_cache_hits_total{engine="1",model_name="Qwen/Qwen2.5-0.5B-Instruct"} 1000.0
"""


def test_vllm_prefix_cache_hits_in_tokens_summed_over_engines():
    snap = vllm_snapshot(VLLM_PREFIX_CACHE_METRICS, model="Qwen/Qwen2.5-0.5B-Instruct")
    assert snap.healthy and snap.prompt_cache == PromptCacheCounters(queried_tokens=16000, hit_tokens=10024)
    assert snap.prompt_cache.hit_ratio == 10024 / 16000


def test_vllm_prefix_cache_under_the_gpu_names_and_absent_when_not_reported():
    text = VLLM_PREFIX_CACHE_METRICS.replace("vllm:prefix_cache_", "vllm:gpu_prefix_cache_")
    assert vllm_snapshot(text).prompt_cache == PromptCacheCounters(queried_tokens=16000, hit_tokens=10024)
    assert vllm_snapshot(VLLM_METRICS).prompt_cache is None  # queries without hits: not a reading
    assert vllm_snapshot(VLLM_OLD_METRICS).prompt_cache is None
    other = vllm_snapshot(VLLM_PREFIX_CACHE_METRICS.replace("Qwen/Qwen2.5-0.5B-Instruct", "m"), model="m")
    assert other.prompt_cache.queried_tokens == 16000
    nothing_yet = VLLM_PREFIX_CACHE_METRICS.replace("12000.0", "0.0").replace("4000.0", "0.0") \
        .replace("9024.0", "0.0").replace("1000.0", "0.0")
    assert vllm_snapshot(nothing_yet).prompt_cache.hit_ratio is None


# -- TGI ---------------------------------------------------------------------------------------------

def test_tgi_queue_and_batch():
    snap = tgi_snapshot(TGI_METRICS)
    assert snap.healthy and (snap.waiting, snap.running) == (6, 32) and snap.kv_cache_usage is None


def test_tgi_without_load_metrics():
    assert not tgi_snapshot("# TYPE tgi_request_count counter\ntgi_request_count 1\n").healthy


# -- llama-server ----------------------------------------------------------------------------------------

def test_llama_server_metrics():
    snap = llama_server_snapshot(LLAMA_SERVER_METRICS, 200, '{"status":"ok"}')
    assert snap.healthy and not snap.loading
    assert (snap.running, snap.waiting, snap.kv_cache_usage) == (2, 3, 0.25)


def test_llama_server_loading_model():
    body = '{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}'
    snap = llama_server_snapshot(health_status=503, health_body=body)
    assert snap.loading and not snap.healthy and "Loading model" in snap.detail


def test_llama_server_other_503_is_down():
    snap = llama_server_snapshot(health_status=500, health_body={"error": {"message": "boom"}})
    assert not snap.healthy and not snap.loading and "boom" in snap.detail


def test_llama_server_no_slot_available_is_busy_not_down():
    snap = llama_server_snapshot(health_status=503, health_body='{"status":"no slot available","slots_idle":0,"slots_processing":4}',
                                 slots=[{"id": i, "state": 1} for i in range(4)])
    assert snap.healthy and snap.running == 4 and "busy" in snap.detail


def test_llama_server_slots_without_metrics():
    slots = [{"id": 0, "is_processing": True, "n_ctx": 4096}, {"id": 1, "is_processing": False},
             {"id": 2, "is_processing": True}]
    snap = llama_server_snapshot(health_status=200, health_body={"status": "ok"}, slots=slots)
    assert snap.healthy and snap.running == 2 and snap.waiting == 0 and snap.kv_cache_usage is None


def test_llama_server_metrics_win_over_slots_and_newer_servers_lack_kv_ratio():
    text = LLAMA_SERVER_METRICS.replace("llamacpp:kv_cache_usage_ratio 0.25", "")
    snap = llama_server_snapshot(text, 200, "", slots=[{"id": 0, "is_processing": True}])
    assert snap.running == 2 and snap.kv_cache_usage is None


def test_llama_server_prompt_cache_where_the_build_counts_cached_tokens():
    assert llama_server_snapshot(LLAMA_SERVER_METRICS, 200, "").prompt_cache is None  # upstream: per answer only
    text = LLAMA_SERVER_METRICS + (
        "# HELP llamacpp:prompt_tokens_cached_total Number of prompt tokens reused from the cache\n"
        "# TYPE llamacpp:prompt_tokens_cached_total counter\n"
        "llamacpp:prompt_tokens_cached_total 30702\n")
    snap = llama_server_snapshot(text, 200, "")
    assert snap.prompt_cache == PromptCacheCounters(queried_tokens=10234 + 30702, hit_tokens=30702)


def test_llama_server_nothing_known():
    assert not llama_server_snapshot().healthy


# -- Ollama ------------------------------------------------------------------------------------------------

PS = {"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest", "size": 3355308032,
                  "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                  "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                              "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
                  "expires_at": "2024-12-17T10:06:34.31-08:00", "size_vram": 3355308032}]}


def test_ollama_loaded_model_with_implicit_latest_tag():
    snap = ollama_snapshot(True, PS, "llama3.2")
    assert snap.healthy and "loaded" in snap.detail and "3.1 GiB" in snap.detail
    assert (snap.waiting, snap.running) == (0, 0)


def test_ollama_model_not_loaded_is_still_healthy():
    snap = ollama_snapshot(True, {"models": []}, "qwen2.5:0.5b")
    assert snap.healthy and "not loaded" in snap.detail
    assert "not loaded" in ollama_snapshot(True, PS, "llama3.2:1b").detail


def test_ollama_detail_names_the_version_the_model_as_configured_and_what_is_in_memory():
    snap = ollama_snapshot(True, PS, "llama3.2", version="0.6.5")
    assert snap.detail.startswith("ollama 0.6.5: llama3.2 loaded until 2024-12-17T10:06:34.31-08:00")
    assert snap.detail.endswith("1 model(s) in memory")
    cpu = {"models": [dict(PS["models"][0], size_vram=0)]}
    assert "on CPU" in ollama_snapshot(True, cpu, "llama3.2:latest").detail


def test_ollama_canonical_names():
    assert ollama_canonical("llama3.2") == "llama3.2:latest"
    assert ollama_canonical("qwen2.5:0.5b") == "qwen2.5:0.5b"
    assert ollama_canonical("host:5000/ns/m") == "host:5000/ns/m:latest"


def test_ollama_down():
    assert not ollama_snapshot(False, None, "llama3.2").healthy


# -- loaded models (the dashboard's per-instance column) ---------------------------------------------------

def test_loaded_models_as_each_engine_names_them():
    from nlweb_local.providers.load_parsers import openai_models

    assert vllm_snapshot(VLLM_METRICS).models == ("Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-3.1-8B-Instruct")
    assert ollama_snapshot(True, PS, "qwen2.5:0.5b").models == ("llama3.2:latest",)  # what is in memory, not ours
    assert ollama_snapshot(True, {"models": []}, "llama3.2").models == ()
    assert openai_models('{"object":"list","data":[{"id":"smol","object":"model","owned_by":"me"}]}') == ("smol",)
    assert openai_models("not json") is None and openai_models('{"data": 3}') is None
    named = [{"id": 0, "is_processing": False, "model": "gemma-3-270m"}, {"id": 1, "is_processing": True}]
    assert llama_server_snapshot(None, 200, '{"status":"ok"}', named).models == ("gemma-3-270m",)
    assert llama_server_snapshot(LLAMA_SERVER_METRICS, 200, '{"status":"ok"}').models is None  # not said
