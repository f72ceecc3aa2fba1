"""Plain helpers every layer may use: errors, limits, input-tensor checks, cache files, output paths and the
description of the machine a run is on (``environment``). Nothing here imports another signflow-zoo package."""
