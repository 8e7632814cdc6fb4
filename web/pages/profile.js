// My profile: the photo (chosen, previewed before it is saved, removable), the display name,
// and for counselors the public directory profile (headline and bio).

import { $, h, avatar } from '../dom.js';
import { t, dateTime } from '../i18n.js';

export function setupProfile(app) {
  let previewUrl = null;

  function clearPreview() {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    $('photo-file').value = '';
    $('photo-upload').hidden = true;
    $('photo-preview-note').hidden = true;
  }

  function render() {
    const me = app.me;
    if (!me) return;
    const name = me.nickname ?? me.email ?? '';
    const shown = previewUrl ?? me.image?.url ?? null;
    const photo = avatar(name, shown, true);
    if (shown) photo.querySelector('img').alt = t('profile.photo.alt');
    photo.removeAttribute('aria-hidden');
    $('photo').replaceChildren(photo);
    $('photo-remove').hidden = !me.image || Boolean(previewUrl);
    const mb = Math.round(((me.limits?.image_max_bytes ?? 5 * 1024 * 1024) / (1024 * 1024)) * 10) / 10;
    $('photo-hint').textContent = t('profile.photo.hint', { mb });
    if (document.activeElement !== $('nickname')) $('nickname').value = me.nickname ?? '';
    $('profile-email').textContent = me.email ?? '';
    $('profile-role').textContent = t(`role.${me.role}`);
    const counselor = me.role === 'counselor';
    $('counselor-form').hidden = !counselor;
    if (counselor) {
      const p = me.counselor_profile;
      $('counselor-state').textContent = p?.published_at ? t('profile.published', { when: dateTime(p.published_at) }) : t('profile.unpublished');
      if (p && !$('counselor-form').contains(document.activeElement)) {
        $('headline').value = p.headline ?? '';
        $('bio').value = p.bio ?? '';
      }
    }
  }

  $('photo-choose').addEventListener('click', () => $('photo-file').click());
  $('photo-file').addEventListener('change', () => {
    const file = $('photo-file').files[0];
    $('photo-error').textContent = '';
    if (!file) return;
    const max = app.me.limits?.image_max_bytes;
    if (max && file.size > max) {
      $('photo-error').textContent = app.errorText({ code: 'too_large' });
      $('photo-file').value = '';
      return;
    }
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    $('photo-upload').hidden = false;
    $('photo-preview-note').hidden = false;
    render();
    $('photo-upload').focus();
  });
  /** Saves through the API, then shows the fresh profile and says so; a refusal is shown
   * in `errorEl`. Returns whether it saved. */
  async function save(errorEl, request, done) {
    errorEl.textContent = '';
    try {
      await request();
      await app.refreshMe();
      render();
      app.toast(t(done));
      return true;
    } catch (e) {
      errorEl.textContent = app.errorText(e);
      return false;
    }
  }

  $('photo-upload').addEventListener('click', async () => {
    const file = $('photo-file').files[0];
    if (!file) return;
    const form = new FormData();
    form.append('image', file);
    $('photo-upload').disabled = true;
    const saved = await save($('photo-error'), async () => {
      await app.api('POST', '/users/me/image', form);
      clearPreview();
    }, 'profile.photo.saved');
    $('photo-upload').disabled = false;
    if (saved) $('photo-choose').focus();
  });
  $('photo-remove').addEventListener('click', async () => {
    if (await save($('photo-error'), () => app.api('DELETE', '/users/me/image'), 'profile.photo.removed')) {
      $('photo-choose').focus();
    }
  });

  $('nickname-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const saved = await save($('nickname-error'), () => app.api('PATCH', '/users/me', { nickname: $('nickname').value }), 'profile.saved');
    if (!saved) $('nickname').focus();
  });

  $('counselor-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    await save($('counselor-error'),
      () => app.api('PUT', '/users/me/counselor-profile', { headline: $('headline').value, bio: $('bio').value }),
      'profile.saved');
  });

  return {
    async show() {
      await app.refreshMe();
      render();
    },
    hide: clearPreview,
    relabel: render,
  };
}
