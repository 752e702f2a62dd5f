from setuptools import find_packages, setup

setup(
    name="i2v-adapter",
    version="0.1.0",
    description="I2V-Adapter: train, sample and evaluate image-to-video adapters on frozen SD1.5/SDXL + AnimateDiff",
    packages=find_packages(include=["i2v", "i2v.*"]),
    package_data={"i2v": ["assets/*", "assets/**/*"]},
    python_requires=">=3.11",
    extras_require={"notebook": ["jupyterlab"]},   # to open notebooks/quickstart.ipynb; running it needs only nbclient
)
