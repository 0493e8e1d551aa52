import { createApp } from 'vue'
import App from './App.vue'
import './style.css'
import { start } from './store'

createApp(App).mount('#app')
void start()
