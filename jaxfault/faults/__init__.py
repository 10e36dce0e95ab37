"""The fault package: one exact sampler of stuck-at and bit-flip faults for every method.

* :mod:`jaxfault.faults.sampler`: the sampler. Faulty cells are found by geometric gaps, drawn
  in chunks inside a ``lax.while_loop`` that continues until the last cell is passed. There is
  no fixed capacity anywhere, so no fault can ever be dropped (no overflow to detect); the
  static ``rate_bound`` only sizes the chunks (mean + 10 sd), i.e. it affects speed, not the
  faults. The faults depend only on the key and the rates, so a rate given as a Python number
  and the same rate traced inside one compiled sweep give identical faults.
* :mod:`jaxfault.faults.words`: faults over the stored cells of uint32 words of any width
  (bf16 words with a stored mask for Sparrow / SEC-DED / unprotected, 4/8/16-bit
  two's-complement integer words for NeuralFuse), replay of given maps, FaultStats.
* :mod:`jaxfault.faults.placement`: placements (independent, memory-array), weight orders
  (Flax, PyTorch).

See docs/faults.md.
"""
from jaxfault.faults.placement import (ARRAY_COLS, ARRAY_ROWS, LAYOUTS, PLACEMENTS, check_layout, check_placement,
                                       from_layout_order, memory_array_maps, memory_array_rows_slots,
                                       memory_array_word_maps, pack_cells, resolve_layout, to_layout_order,
                                       unpack_cells)
from jaxfault.faults.sampler import BLOCK, CHUNK_CAP, MAX_SEGMENT_CELLS, chunk_blocks, geometric_gaps, resolve_rate
from jaxfault.faults.words import (FaultStats, apply_flips, apply_stuck_at, apply_stuck_at_int, fault_stats, flip_map,
                                   inject_flips, inject_flips_each, inject_maps, inject_stuck_at, inject_stuck_at_each,
                                   int_stored_mask, int_to_words, merge_stats, stored_positions, stuck_at_maps,
                                   words_to_int)

__all__ = ["ARRAY_COLS", "ARRAY_ROWS", "BLOCK", "CHUNK_CAP", "LAYOUTS", "MAX_SEGMENT_CELLS", "PLACEMENTS",
           "FaultStats", "apply_flips", "apply_stuck_at", "apply_stuck_at_int", "check_layout", "check_placement",
           "chunk_blocks", "fault_stats", "flip_map", "from_layout_order", "geometric_gaps", "inject_flips",
           "inject_flips_each", "inject_maps", "inject_stuck_at", "inject_stuck_at_each", "int_stored_mask",
           "int_to_words",
           "memory_array_maps", "memory_array_rows_slots", "memory_array_word_maps", "merge_stats", "pack_cells",
           "resolve_layout", "resolve_rate", "stored_positions", "stuck_at_maps", "to_layout_order", "unpack_cells", "words_to_int"]
