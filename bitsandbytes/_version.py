# The single source of the package version (read by pyproject.toml and CMakeLists.txt).
__version__ = "1.0.0"
