// Sign-in and sign-up: the configured providers (Google, Naver, Kakao, any OpenID Connect
// provider), a local account, and a new local account. Errors say what went wrong in the
// person's language; the demo accounts are named only where the server seeded them.

import { $, h } from '../dom.js';
import { t } from '../i18n.js';
import { login, signup } from '../session.js';

export function setupSignin(app) {
  let providers = [];
  let notice = null;

  function renderProviders() {
    $('providers').replaceChildren(...providers.map((p) =>
      h('a', { class: 'btn', href: p.authorization_url, dataset: { provider: p.name } }, t('signin.with', { name: p.display_name }))));
    $('providers-or').hidden = providers.length === 0;
  }

  function selectTab(which) {
    const signin = which === 'signin';
    $('tab-signin').setAttribute('aria-selected', String(signin));
    $('tab-signup').setAttribute('aria-selected', String(!signin));
    $('tab-signin').tabIndex = signin ? 0 : -1;
    $('tab-signup').tabIndex = signin ? -1 : 0;
    $('local').hidden = !signin;
    $('signup').hidden = signin;
  }

  $('tab-signin').addEventListener('click', () => selectTab('signin'));
  $('tab-signup').addEventListener('click', () => selectTab('signup'));
  // Arrow keys move between the tabs (the WAI-ARIA tabs pattern).
  for (const tab of [$('tab-signin'), $('tab-signup')]) {
    tab.addEventListener('keydown', (ev) => {
      if (ev.key !== 'ArrowLeft' && ev.key !== 'ArrowRight') return;
      const next = tab.id === 'tab-signin' ? 'signup' : 'signin';
      selectTab(next);
      $(`tab-${next}`).focus();
    });
  }

  async function submit(form, errorEl, action) {
    errorEl.textContent = '';
    const invalid = [...form.elements].find((el) => el.willValidate && !el.checkValidity());
    if (invalid) {
      errorEl.textContent = invalid.validationMessage;
      invalid.focus();
      return;
    }
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      await action(new FormData(form));
      form.reset();
      await app.signedIn();
    } catch (e) {
      errorEl.textContent = app.errorText(e);
    } finally {
      button.disabled = false;
    }
  }

  $('local').addEventListener('submit', (ev) => {
    ev.preventDefault();
    submit(ev.target, $('login-error'), (f) => login(f.get('email'), f.get('password')));
  });
  $('signup').addEventListener('submit', (ev) => {
    ev.preventDefault();
    submit(ev.target, $('signup-error'), (f) => signup(f.get('email'), f.get('password'), f.get('nickname')));
  });

  fetch('/auth/providers').then((r) => r.json()).then((j) => {
    providers = j.providers ?? [];
    $('demo').hidden = !j.demo;
    renderProviders();
  }).catch(() => {});

  return {
    show() {
      $('signin-notice').textContent = notice ? t(notice) : '';
    },
    /** A message for the next time the page shows (expired, deleted, signed out). */
    say(key) {
      notice = key;
      $('signin-notice').textContent = key ? t(key) : '';
    },
    relabel() {
      renderProviders();
      $('signin-notice').textContent = notice ? t(notice) : '';
    },
  };
}
