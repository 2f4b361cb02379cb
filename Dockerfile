# instatag's Airflow image: the official Apache Airflow image plus the instatag package, torch,
# WordNet for NLTK and the pretrained resnet18 weights, all fetched at build time (an online
# build); nothing is downloaded when the containers run. docker-compose.yml builds it:
#
#   docker-compose build
#       torch from PyPI: CUDA-enabled wheels (they also run on a CPU), several GB
#   docker-compose build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
#       CPU-only torch: a much smaller image for hosts without a GPU
#
# See docs/deployment.md.
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

ARG AIRFLOW_VERSION
ARG TORCH_INDEX_URL=""

# WordNet's database files (Debian's packages) for the offline NLTK corpus built below
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends wordnet-base wordnet-sense-index \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /opt/instatag/data /opt/instatag/drop \
 && chown -R airflow:0 /opt/instatag
USER airflow

ENV TORCH_HOME=/opt/instatag/torch \
    NLTK_DATA=/opt/instatag/nltk_data \
    INSTATAG_DATA_DIR=/opt/instatag/data \
    INSTATAG_DROP_DIRS=/opt/instatag/drop

# The package, pinned by the project's constraints, with Airflow kept at the image's version.
# Editable, so that sql/ (the views) stays beside the package as in a checkout.
COPY --chown=airflow:0 pyproject.toml constraints.txt README.md /opt/instatag/src/
COPY --chown=airflow:0 instatag /opt/instatag/src/instatag
COPY --chown=airflow:0 sql /opt/instatag/src/sql
RUN pip install --no-cache-dir ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
      "apache-airflow==${AIRFLOW_VERSION}" -c /opt/instatag/src/constraints.txt -e /opt/instatag/src

# Build-time downloads: WordNet for NLTK (from the Debian files above) and torchvision's resnet18
# ImageNet weights into $TORCH_HOME; then check that instatag finds both weights files offline.
RUN python -m instatag.wordnet provision --target "$NLTK_DATA" \
 && python -c "import torchvision; torchvision.models.resnet18(weights='IMAGENET1K_V1')" \
 && python -c "from instatag import weights; from instatag.settings import load_settings; \
s = load_settings(); print(weights.resolve('resnet18', s)); [print(weights.resolve(a, s)) for a in weights.EFFICIENTNET_LITE]" \
 && python -c "from instatag import wordnet; wordnet.require()"

# The DAGs and the UI plugin (docker-compose.yml mounts the working tree's copies over these)
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
