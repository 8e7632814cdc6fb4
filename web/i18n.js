// Korean and English for the web client. Korean when the browser prefers it (or the person
// chose it with the switch in the header; the choice is remembered on this device), English
// otherwise. Dates and times follow the chosen language's conventions via Intl.
// Static markup names its text with data-i18n="key" (text) and data-i18n-attr="attr:key;..."
// (attributes); apply() fills both. Scripts call t(key, params).

const STORE = 'neulbi.lang';

const MESSAGES = {
  ko: {
    'app.title': '늘비 · 마음을 나누는 상담',
    'skip': '본문으로 건너뛰기',
    'nav.label': '주 메뉴',
    'nav.directory': '상담사 찾기',
    'nav.rooms': '상담방',
    'nav.calls': '통화 기록',
    'nav.profile': '내 프로필',
    'nav.account': '계정',
    'lang.switch': 'English',
    'lang.switch.label': 'Switch to English',
    'signout': '로그아웃',
    'status.live': '실시간 연결됨',
    'status.connecting': '연결 중…',
    'status.offline': '연결 끊김',
    'banner.reconnecting': '연결이 끊어졌습니다. 다시 연결하는 중입니다…',
    'banner.back': '다시 연결되었습니다. 놓친 메시지를 불러왔습니다.',
    'unread.total': '읽지 않은 메시지 {n}개',

    'signin.heading': '마음 편히 이야기할 곳',
    'signin.lead': '검증된 상담사와 실시간 채팅, 화상 상담으로 만나 보세요. 대화는 안전하게 보호됩니다.',
    'signin.point1': '원하는 상담사를 찾아 바로 대화를 시작할 수 있어요.',
    'signin.point2': '채팅과 화상 상담을 한곳에서.',
    'signin.point3': '언제든 내 데이터를 내려받고 계정을 삭제할 수 있어요.',
    'signin.tab.signin': '로그인',
    'signin.tab.signup': '회원가입',
    'signin.with': '{name}(으)로 계속하기',
    'signin.or': '또는 이메일로',
    'field.email': '이메일',
    'field.password': '비밀번호',
    'field.password.hint': '8자 이상',
    'field.nickname': '닉네임',
    'field.nickname.hint': '상담사와 상대방에게 보이는 이름 (1–40자)',
    'signin.submit': '로그인',
    'signup.submit': '가입하고 시작하기',
    'signin.demo': '체험용 계정',
    'signin.demo.client': '내담자',
    'signin.demo.counselor': '상담사',
    'signin.expired': '로그인이 만료되었습니다. 다시 로그인해 주세요.',
    'signin.closed': '이 계정은 삭제되었습니다.',
    'signin.deleted': '계정과 개인 정보가 삭제되었습니다. 그동안 늘비를 이용해 주셔서 감사합니다.',
    'signin.signedout': '로그아웃했습니다.',

    'dir.heading': '상담사 찾기',
    'dir.lead': '이름이나 관심 분야로 찾아보세요.',
    'dir.search': '상담사 검색',
    'dir.search.placeholder': '예: 청소년, 불안, 진로',
    'dir.sort': '정렬',
    'dir.filter': '보기',
    'dir.filter.all': '모든 상담사',
    'dir.filter.mine': '나와 상담 중인 상담사',
    'dir.nomine': '아직 상담 중인 상담사가 없습니다.',
    'dir.sort.recent': '최근 등록순',
    'dir.sort.name': '이름순',
    'dir.start': '상담 시작하기',
    'dir.open': '상담방 열기',
    'dir.empty': '아직 프로필을 공개한 상담사가 없습니다.',
    'dir.nomatch': '"{q}"에 맞는 상담사가 없습니다.',
    'dir.nomatch.hint': '다른 단어로 검색해 보세요.',
    'dir.count': '상담사 {n}명',
    'dir.counselorOnly': '상담사 계정은 상담사 찾기 대신 내 프로필에서 공개 프로필을 관리합니다.',

    'rooms.heading': '상담방',
    'rooms.empty': '아직 상담방이 없습니다.',
    'rooms.empty.client': '상담사 찾기에서 상담을 시작해 보세요.',
    'rooms.empty.counselor': '내담자가 상담을 요청하면 여기에 표시됩니다.',
    'rooms.nomessages': '아직 메시지가 없습니다',
    'rooms.closed': '종료됨',
    'rooms.unread': '읽지 않은 메시지 {n}개',
    'rooms.pick': '왼쪽에서 상담방을 선택하세요.',
    'rooms.newmessage': '새 메시지',
    'chat.with': '{name} 님과의 상담',
    'chat.back': '상담방 목록',
    'chat.older': '이전 메시지 더 보기',
    'chat.loading': '불러오는 중…',
    'chat.start': '대화의 시작입니다.',
    'chat.write': '메시지 입력',
    'chat.send': '보내기',
    'chat.sending': '보내는 중',
    'chat.stored': '전송됨',
    'chat.failed': '전송 실패',
    'chat.retry': '다시 보내기',
    'chat.read': '읽음',
    'chat.erased': '(삭제된 메시지)',
    'chat.close': '상담 종료',
    'chat.close.confirm': '이 상담방을 종료할까요? 종료 후에는 누구도 메시지를 보낼 수 없습니다.',
    'chat.closed': '종료된 상담방입니다. 기록은 계속 볼 수 있습니다.',
    'chat.offline': '연결이 돌아오면 보낼 수 있습니다.',
    'chat.someone': '상대방',
    'chat.user': '사용자 {id}',

    'calls.heading': '통화 기록',
    'calls.lead': '화상 상담 기록입니다.',
    'calls.empty': '아직 통화 기록이 없습니다.',
    'calls.with': '{name} 님',
    'calls.openroom': '상담방',
    'call.missed': '부재중 통화',
    'call.cancelled': '취소된 통화',
    'call.done': '화상 통화 · {d}',
    'call.ringing': '화상 통화 · 연결 중',
    'call.inprogress': '화상 통화 · 진행 중',
    'call.start': '화상 상담',
    'call.incoming': '화상 상담 요청',
    'call.isCalling': '{name} 님이 화상 상담을 요청합니다',
    'call.accept': '받기',
    'call.decline': '거절',
    'call.title': '{name} 님과 화상 상담',
    'call.connecting': '연결 중…',
    'call.calling': '상대방을 부르는 중…',
    'call.connected': '연결됨',
    'call.reconnected': '다시 연결됨',
    'call.reconnecting': '다시 연결하는 중…',
    'call.declined': '상대방이 지금은 통화할 수 없습니다.',
    'call.noanswer': '응답이 없습니다.',
    'call.ended': '통화가 끝났습니다.',
    'call.endedAfter': '통화 종료 · {d}',
    'call.lost': '연결이 끊어졌습니다.',
    'call.elsewhere': '이 통화는 여기서 연결할 수 없는 다른 서버에서 진행 중입니다.',
    'call.couldnt': '통화를 시작할 수 없습니다: {why}',
    'call.nomedia': '카메라나 마이크를 쓸 수 없습니다. 상대방의 영상과 소리는 보고 들을 수 있습니다.',
    'call.ending': '종료하는 중…',
    'call.waiting': '상대방을 기다리는 중…',
    'call.you': '나',
    'call.mute': '음소거',
    'call.unmute': '음소거 해제',
    'call.cameraOff': '카메라 끄기',
    'call.cameraOn': '카메라 켜기',
    'call.hangup': '끊기',
    'call.react': '{emoji} 반응 보내기',
    'call.reactions': '반응 보내기',
    'call.chat': '채팅',
    'call.chat.note': '이 통화에 참여한 사람만 볼 수 있습니다',
    'call.chat.label': '통화 중 메시지',
    'call.chat.placeholder': '메시지',
    'call.duration': '통화 시간',
    'call.muted': '음소거됨',
    'call.camOff': '카메라 꺼짐',
    'call.flag.muted': '🔇 음소거',
    'call.flag.stalled': '연결 불안정',
    'call.flag.dropped': '다시 연결 중…',
    'call.announce.joined': '{name} 님이 들어왔습니다',
    'call.announce.left': '{name} 님이 통화를 나갔습니다',
    'call.announce.dropped': '{name} 님의 연결이 끊겼습니다. 다시 들어오기를 기다립니다',
    'call.announce.back': '{name} 님이 다시 연결되었습니다',
    'call.announce.reacted': '{name} 님의 반응 {emoji}',

    'profile.heading': '내 프로필',
    'profile.lead': '상담 중에 상대방에게 보이는 정보입니다.',
    'profile.photo': '프로필 사진',
    'profile.photo.none': '사진 없음',
    'profile.photo.choose': '사진 선택',
    'profile.photo.hint': 'JPEG, PNG, WebP · 최대 {mb}MB. 위치 정보 등 메타데이터는 지워서 저장합니다.',
    'profile.photo.upload': '이 사진으로 저장',
    'profile.photo.remove': '사진 삭제',
    'profile.photo.preview': '미리보기: 아직 저장되지 않았습니다.',
    'profile.photo.saved': '프로필 사진을 저장했습니다.',
    'profile.photo.removed': '프로필 사진을 삭제했습니다.',
    'profile.photo.alt': '내 프로필 사진',
    'profile.save': '저장',
    'profile.saved': '저장했습니다.',
    'profile.email': '이메일',
    'profile.role': '역할',
    'role.client': '내담자',
    'role.counselor': '상담사',
    'role.operator': '운영자',
    'profile.counselor': '공개 상담사 프로필',
    'profile.counselor.lead': '상담사 찾기에 표시됩니다.',
    'profile.headline': '한 줄 소개',
    'profile.headline.hint': '1–120자',
    'profile.bio': '상세 소개',
    'profile.bio.hint': '경력, 전문 분야, 상담 방식 (최대 4000자)',
    'profile.publish': '공개하기',
    'profile.published': '{when}에 공개됨',
    'profile.unpublished': '아직 공개하지 않았습니다.',

    'account.heading': '계정',
    'account.session': '로그인 정보',
    'account.lastLogin': '마지막 로그인: {when}',
    'account.signoutAll': '모든 기기에서 로그아웃',
    'account.signoutAll.hint': '다른 기기의 로그인도 모두 끝납니다.',
    'account.export': '내 데이터 내려받기',
    'account.export.hint': '늘비가 보관한 내 정보(프로필, 상담방, 내가 쓴 메시지, 통화 기록, 활동 기록)를 JSON 파일로 내려받습니다.',
    'account.export.button': '내려받기',
    'account.export.done': '내 데이터를 내려받았습니다.',
    'account.delete': '계정 삭제',
    'account.delete.hint': '계정을 삭제하면 되돌릴 수 없습니다.',
    'account.delete.button': '계정 삭제…',
    'delete.title': '계정을 삭제할까요?',
    'delete.what1': '이름, 이메일, 프로필 사진, 내가 쓴 메시지의 내용이 영구히 지워집니다. 암호화 키를 파기하므로 백업에서도 복구할 수 없습니다.',
    'delete.what2': '상담 기록에는 "삭제된 메시지"라는 자리만 남고, 상대방은 내용을 볼 수 없게 됩니다.',
    'delete.what3': '모든 기기에서 로그아웃되며 같은 계정으로 다시 로그인할 수 없습니다.',
    'delete.what4': '필요하다면 먼저 내 데이터를 내려받으세요.',
    'delete.confirm.label': '확인을 위해 "{word}"라고 입력하세요',
    'delete.word': '삭제',
    'delete.cancel': '취소',
    'delete.submit': '영구 삭제',

    'error.generic': '문제가 생겼습니다. 잠시 후 다시 시도해 주세요.',
    'error.network': '서버에 연결할 수 없습니다. 네트워크를 확인해 주세요.',
    'error.invalid_credentials': '이메일 또는 비밀번호가 맞지 않습니다.',
    'error.rate_limited': '시도가 너무 많습니다. 잠시 후 다시 시도해 주세요.',
    'error.account_closed': '삭제된 계정입니다.',
    'error.image_too_large': '이미지의 해상도가 너무 큽니다.',
    'error.invalid_image': '이미지를 읽을 수 없습니다. 다른 파일을 선택해 주세요.',
    'error.email_taken': '이미 가입된 이메일입니다. 로그인해 주세요.',
    'error.too_large': '파일이 너무 큽니다.',
    'error.unsupported_image_type': '지원하지 않는 이미지 형식입니다. JPEG, PNG, WebP 파일을 선택해 주세요.',
  },
  en: {
    'app.title': 'Neulbi · counseling that listens',
    'skip': 'Skip to content',
    'nav.label': 'Main menu',
    'nav.directory': 'Find a counselor',
    'nav.rooms': 'Rooms',
    'nav.calls': 'Calls',
    'nav.profile': 'My profile',
    'nav.account': 'Account',
    'lang.switch': '한국어',
    'lang.switch.label': '한국어로 보기',
    'signout': 'Sign out',
    'status.live': 'Live',
    'status.connecting': 'Connecting…',
    'status.offline': 'Offline',
    'banner.reconnecting': 'Connection lost. Reconnecting…',
    'banner.back': 'Back online. Missed messages are loaded.',
    'unread.total': '{n} unread messages',

    'signin.heading': 'A calm place to talk',
    'signin.lead': 'Meet a qualified counselor by live chat or video. Your conversations stay protected.',
    'signin.point1': 'Find the counselor who fits and start talking right away.',
    'signin.point2': 'Chat and video sessions in one place.',
    'signin.point3': 'Download your data or delete your account at any time.',
    'signin.tab.signin': 'Sign in',
    'signin.tab.signup': 'Create account',
    'signin.with': 'Continue with {name}',
    'signin.or': 'or with e-mail',
    'field.email': 'E-mail',
    'field.password': 'Password',
    'field.password.hint': 'At least 8 characters',
    'field.nickname': 'Display name',
    'field.nickname.hint': 'The name your counselor sees (1–40 characters)',
    'signin.submit': 'Sign in',
    'signup.submit': 'Create account and start',
    'signin.demo': 'Demo accounts',
    'signin.demo.client': 'Client',
    'signin.demo.counselor': 'Counselor',
    'signin.expired': 'Your session has expired. Please sign in again.',
    'signin.closed': 'This account was deleted.',
    'signin.deleted': 'Your account and personal data were deleted. Thank you for using Neulbi.',
    'signin.signedout': 'You are signed out.',

    'dir.heading': 'Find a counselor',
    'dir.lead': 'Search by name or by what you want to talk about.',
    'dir.search': 'Search counselors',
    'dir.search.placeholder': 'e.g. anxiety, youth, career',
    'dir.sort': 'Sort',
    'dir.filter': 'Show',
    'dir.filter.all': 'All counselors',
    'dir.filter.mine': 'Counselors I talk with',
    'dir.nomine': 'You have no open session with a counselor yet.',
    'dir.sort.recent': 'Newest first',
    'dir.sort.name': 'By name',
    'dir.start': 'Start a session',
    'dir.open': 'Open room',
    'dir.empty': 'No counselor has published a profile yet.',
    'dir.nomatch': 'No counselor matches "{q}".',
    'dir.nomatch.hint': 'Try other words.',
    'dir.count': '{n} counselors',
    'dir.counselorOnly': 'As a counselor you manage your public profile under My profile.',

    'rooms.heading': 'Rooms',
    'rooms.empty': 'No rooms yet.',
    'rooms.empty.client': 'Start a session from Find a counselor.',
    'rooms.empty.counselor': 'Rooms appear here when a client starts a session with you.',
    'rooms.nomessages': 'No messages yet',
    'rooms.closed': 'Closed',
    'rooms.unread': '{n} unread',
    'rooms.pick': 'Choose a room on the left.',
    'rooms.newmessage': 'New message',
    'chat.with': 'Session with {name}',
    'chat.back': 'All rooms',
    'chat.older': 'Show earlier messages',
    'chat.loading': 'Loading…',
    'chat.start': 'This is the start of the conversation.',
    'chat.write': 'Write a message',
    'chat.send': 'Send',
    'chat.sending': 'Sending',
    'chat.stored': 'Sent',
    'chat.failed': 'Not sent',
    'chat.retry': 'Retry',
    'chat.read': 'Read',
    'chat.erased': '(message deleted)',
    'chat.close': 'End session',
    'chat.close.confirm': 'End this session? Nobody can post in the room afterwards.',
    'chat.closed': 'This session has ended. Its history stays readable.',
    'chat.offline': 'You can send once the connection is back.',
    'chat.someone': 'the other person',
    'chat.user': 'user {id}',

    'calls.heading': 'Calls',
    'calls.lead': 'Your video sessions.',
    'calls.empty': 'No calls yet.',
    'calls.with': '{name}',
    'calls.openroom': 'Room',
    'call.missed': 'Missed call',
    'call.cancelled': 'Cancelled call',
    'call.done': 'Video call · {d}',
    'call.ringing': 'Video call · ringing',
    'call.inprogress': 'Video call · in progress',
    'call.start': 'Start video call',
    'call.incoming': 'Incoming video call',
    'call.isCalling': '{name} is calling',
    'call.accept': 'Accept',
    'call.decline': 'Decline',
    'call.title': 'Video call with {name}',
    'call.connecting': 'Connecting…',
    'call.calling': 'Calling…',
    'call.connected': 'Connected',
    'call.reconnected': 'Reconnected',
    'call.reconnecting': 'Reconnecting…',
    'call.declined': 'Declined: they cannot talk right now.',
    'call.noanswer': 'No answer.',
    'call.ended': 'Call ended.',
    'call.endedAfter': 'Call ended · {d}',
    'call.lost': 'The connection was lost.',
    'call.elsewhere': 'This call runs on another server that cannot be reached from here.',
    'call.couldnt': 'The call could not start: {why}',
    'call.nomedia': 'Camera or microphone unavailable: you can still see and hear them.',
    'call.ending': 'Ending…',
    'call.waiting': 'Waiting for the other person…',
    'call.you': 'You',
    'call.mute': 'Mute',
    'call.unmute': 'Unmute',
    'call.cameraOff': 'Camera off',
    'call.cameraOn': 'Camera on',
    'call.hangup': 'Hang up',
    'call.react': 'React {emoji}',
    'call.reactions': 'Send a reaction',
    'call.chat': 'Chat',
    'call.chat.note': 'seen only by the people in this call',
    'call.chat.label': 'Message during the call',
    'call.chat.placeholder': 'Message',
    'call.duration': 'call duration',
    'call.muted': 'muted',
    'call.camOff': 'camera off',
    'call.flag.muted': '🔇 muted',
    'call.flag.stalled': 'poor connection',
    'call.flag.dropped': 'reconnecting…',
    'call.announce.joined': '{name} joined',
    'call.announce.left': '{name} left the call',
    'call.announce.dropped': "{name}'s connection dropped; waiting for them to come back",
    'call.announce.back': '{name} is back',
    'call.announce.reacted': '{name} reacted {emoji}',

    'profile.heading': 'My profile',
    'profile.lead': 'What the people you talk with see.',
    'profile.photo': 'Profile photo',
    'profile.photo.none': 'No photo',
    'profile.photo.choose': 'Choose a photo',
    'profile.photo.hint': 'JPEG, PNG or WebP, up to {mb} MB. Location and other metadata are removed before it is stored.',
    'profile.photo.upload': 'Save this photo',
    'profile.photo.remove': 'Remove photo',
    'profile.photo.preview': 'Preview: not saved yet.',
    'profile.photo.saved': 'Profile photo saved.',
    'profile.photo.removed': 'Profile photo removed.',
    'profile.photo.alt': 'My profile photo',
    'profile.save': 'Save',
    'profile.saved': 'Saved.',
    'profile.email': 'E-mail',
    'profile.role': 'Role',
    'role.client': 'Client',
    'role.counselor': 'Counselor',
    'role.operator': 'Operator',
    'profile.counselor': 'Public counselor profile',
    'profile.counselor.lead': 'Shown in Find a counselor.',
    'profile.headline': 'Headline',
    'profile.headline.hint': '1–120 characters',
    'profile.bio': 'About you',
    'profile.bio.hint': 'Experience, focus, how you work (up to 4000 characters)',
    'profile.publish': 'Publish',
    'profile.published': 'Published {when}',
    'profile.unpublished': 'Not published yet.',

    'account.heading': 'Account',
    'account.session': 'Sign-in',
    'account.lastLogin': 'Last sign-in: {when}',
    'account.signoutAll': 'Sign out everywhere',
    'account.signoutAll.hint': 'Ends your sessions on every other device too.',
    'account.export': 'Download my data',
    'account.export.hint': 'Everything Neulbi holds about you (profile, rooms, the messages you wrote, calls, activity) as a JSON file.',
    'account.export.button': 'Download',
    'account.export.done': 'Your data was downloaded.',
    'account.delete': 'Delete account',
    'account.delete.hint': 'Deleting your account cannot be undone.',
    'account.delete.button': 'Delete account…',
    'delete.title': 'Delete your account?',
    'delete.what1': 'Your name, e-mail, profile photo and the text of your messages are erased for good: their encryption key is destroyed, so not even a backup can bring them back.',
    'delete.what2': 'Conversations keep a "message deleted" placeholder; the other person can no longer read what you wrote.',
    'delete.what3': 'You are signed out everywhere and cannot sign in to this account again.',
    'delete.what4': 'Download your data first if you want a copy.',
    'delete.confirm.label': 'Type "{word}" to confirm',
    'delete.word': 'DELETE',
    'delete.cancel': 'Cancel',
    'delete.submit': 'Delete for good',

    'error.generic': 'Something went wrong. Please try again in a moment.',
    'error.network': 'The server cannot be reached. Check your connection.',
    'error.invalid_credentials': 'The e-mail or password is not right.',
    'error.rate_limited': 'Too many attempts. Please wait a moment and try again.',
    'error.account_closed': 'This account was deleted.',
    'error.image_too_large': 'The image has too many pixels.',
    'error.invalid_image': 'The image cannot be read. Please choose another file.',
    'error.email_taken': 'This e-mail already has an account. Please sign in.',
    'error.too_large': 'The file is too large.',
    'error.unsupported_image_type': 'This image format is not supported. Choose a JPEG, PNG or WebP file.',
  },
};

/** The languages the client speaks. */
export const LANGS = Object.keys(MESSAGES);

function initial() {
  const saved = localStorage.getItem(STORE);
  if (LANGS.includes(saved)) return saved;
  const preferred = navigator.languages?.length ? navigator.languages : [navigator.language];
  for (const l of preferred) {
    const base = String(l).toLowerCase().split('-')[0];
    if (LANGS.includes(base)) return base;
  }
  return 'en';
}

let lang = initial();
const listeners = new Set();

/** The current language, `ko` or `en`. */
export const currentLang = () => lang;

/** The text for `key`, with `{name}` placeholders filled from `params`. */
export function t(key, params = {}) {
  const text = MESSAGES[lang][key] ?? MESSAGES.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, k) => (k in params ? String(params[k]) : `{${k}}`));
}

/** Whether a message exists (for server error codes). */
export const has = (key) => key in MESSAGES.en;

/** Fills data-i18n / data-i18n-attr under `root`. */
export function apply(root = document) {
  document.documentElement.lang = lang;
  // The switch names the other language in that language.
  document.getElementById('lang')?.setAttribute('lang', lang === 'ko' ? 'en' : 'ko');
  document.title = t('app.title');
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-attr]')) {
    for (const pair of el.dataset.i18nAttr.split(';')) {
      const [attr, key] = pair.split(':');
      if (attr && key) el.setAttribute(attr.trim(), t(key.trim()));
    }
  }
}

/** Switches language, re-labels the page and tells the pages to re-render. */
export function setLang(next) {
  if (!LANGS.includes(next) || next === lang) return;
  lang = next;
  localStorage.setItem(STORE, next);
  apply();
  for (const f of listeners) f(next);
}

/** Calls `f` after every language switch. */
export const onLangChange = (f) => listeners.add(f);

const locale = () => (lang === 'ko' ? 'ko-KR' : 'en');

/** "오후 3:04" / "3:04 PM". */
export const time = (at) => new Intl.DateTimeFormat(locale(), { hour: 'numeric', minute: '2-digit' }).format(new Date(at));

/** "2026년 11월 30일 (월)" / "Mon, Nov 30, 2026". */
export const day = (at) => new Intl.DateTimeFormat(locale(), { dateStyle: 'full' }).format(new Date(at));

/** Date and time, medium. */
export const dateTime = (at) => new Intl.DateTimeFormat(locale(), { dateStyle: 'medium', timeStyle: 'short' }).format(new Date(at));

/** For a list: the time today, the date otherwise. */
export function shortWhen(at) {
  const d = new Date(at);
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return time(d);
  const opts = d.getFullYear() === now.getFullYear() ? { month: 'short', day: 'numeric' } : { dateStyle: 'short' };
  return new Intl.DateTimeFormat(locale(), opts).format(d);
}

/** Sorting names in the chosen language. */
export const compare = (a, b) => a.localeCompare(b, locale());
