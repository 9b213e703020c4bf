"""The comfy-free model-swap pipeline: one module per stage, nothing imported from ComfyUI."""
