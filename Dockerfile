# translate for GPU batch jobs:
#   docker build -t translate .
#   docker run --gpus all -v "$PWD":/data translate run in out --weights w.safetensors
#   docker run --gpus all -v "$PWD":/data --entrypoint torchrun translate \
#       --nproc-per-node 8 -m translate run in out --weights w.safetensors
# The base image brings CUDA, cuDNN and PyTorch; pip installs the package as pyproject.toml declares
# it (its torch requirement is already met, so the image's CUDA build of torch is kept).
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TRANSLATE_HOME=/opt/translate

COPY pyproject.toml README.md /opt/translate/
COPY translate /opt/translate/translate
COPY recipes /opt/translate/recipes
COPY weights /opt/translate/weights
RUN pip install /opt/translate && translate --help > /dev/null

RUN useradd --create-home --uid 1000 translate && mkdir -p /data && chown translate /data
USER translate
WORKDIR /data
ENTRYPOINT ["translate"]
CMD ["--help"]
