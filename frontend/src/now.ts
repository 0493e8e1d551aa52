// A display clock for "waiting 12 s": ticks once a second while something shows an
// age. It reads no data (the data comes from facts); it only re-renders ages.
import { onBeforeUnmount, onMounted, ref } from 'vue'

export function useNow(periodMs = 1000) {
  const now = ref(Date.now())
  let timer: ReturnType<typeof setInterval> | null = null
  onMounted(() => {
    timer = setInterval(() => {
      now.value = Date.now()
    }, periodMs)
  })
  onBeforeUnmount(() => {
    if (timer !== null) clearInterval(timer)
  })
  return now
}
